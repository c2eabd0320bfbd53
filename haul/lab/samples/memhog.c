/*
 * A container workload for tests and benchmarks: holds MIB mebibytes of memory, each
 * page filled from a seed, counts into COUNT_FILE 50 times a second, and on SIGTERM
 * checks every page and writes "PASS <count>" or "FAIL ..." to VERDICT_FILE.
 *
 * Built static (gcc -static), so it runs in a busybox root filesystem:
 *   memhog MIB COUNT_FILE VERDICT_FILE
 */
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

static volatile sig_atomic_t stop;

static void on_term(int sig) { (void)sig; stop = 1; }

static uint64_t word(uint64_t page, uint64_t i) {
    uint64_t x = page * 0x9E3779B97F4A7C15ULL + i * 0xBF58476D1CE4E5B9ULL + 0x5851F42D4C957F2DULL;
    x ^= x >> 31;
    return x;
}

static int write_text(const char *path, const char *text) {
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) return -1;
    fputs(text, f);
    if (fclose(f) != 0) return -1;
    return rename(tmp, path);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: memhog MIB COUNT_FILE VERDICT_FILE\n");
        return 2;
    }
    uint64_t pages = strtoull(argv[1], NULL, 10) * (1024 * 1024 / PAGE);
    uint64_t *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE,
                         MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (uint64_t p = 0; p < pages; p++)
        for (uint64_t i = 0; i < PAGE / 8; i += 64)
            mem[p * (PAGE / 8) + i] = word(p, i);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, NULL);
    unsigned long count = 0;
    char text[64];
    struct timespec tick = {0, 20 * 1000 * 1000};
    while (!stop) {
        count++;
        snprintf(text, sizeof text, "%lu\n", count);
        write_text(argv[2], text);
        nanosleep(&tick, NULL);
    }
    for (uint64_t p = 0; p < pages; p++)
        for (uint64_t i = 0; i < PAGE / 8; i += 64)
            if (mem[p * (PAGE / 8) + i] != word(p, i)) {
                snprintf(text, sizeof text, "FAIL page %llu\n", (unsigned long long)p);
                write_text(argv[3], text);
                return 1;
            }
    snprintf(text, sizeof text, "PASS %lu\n", count);
    write_text(argv[3], text);
    return 0;
}

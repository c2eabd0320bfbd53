"""Parsing HAProxy's runtime API answers, recorded from HAProxy 2.6.12 in a lab.

Each answer is exactly what the stats socket sent for
``set severity-output number; COMMAND`` (recorded by running the commands
against the lab's HAProxy: web-host1 up with its checks disabled, web-host2
draining with its check refused, web-host3 with a check timing out, slot1 a
spare server-template slot in maintenance).
"""

from __future__ import annotations

import pytest

from haul.cutover.haproxy_runtime import (
    HaproxyError,
    OpState,
    parse_answer,
    parse_servers_state,
    parse_stat,
    parse_weight,
)

#: show servers state web
SERVERS_STATE = (
    "\n"
    "1\n"
    "# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight sr"
    "v_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_hea"
    "lth srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port"
    " srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n"
    "3 web 1 web-host1 10.77.0.1 2 0 1 1 1 15 3 2 2 0 0 0 - 8000 - 0 0 - - 0\n"
    "3 web 2 web-host2 10.77.0.2 0 12 1 1 0 8 2 0 6 0 0 0 - 8000 - 0 0 - - 0\n"
    "3 web 3 web-host3 10.77.0.3 0 0 1 1 1 7 0 0 7 0 0 0 - 8000 - 0 0 - - 0\n"
    "3 web 4 slot1 0.0.0.0 0 5 1 1 1 1 0 0 14 0 0 0 - 8000 - 0 0 - - 0\n"
    "\n"
)

#: show stat web 4 -1
STAT = (
    "\n"
    "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,"
    "wretr,wredis,status,weight,act,bck,chkfail,chkdown,lastchg,downtime,qlimit,pid,iid,"
    "sid,throttle,lbtot,tracked,type,rate,rate_lim,rate_max,check_status,check_code,"
    "check_duration,hrsp_1xx,hrsp_2xx,hrsp_3xx,hrsp_4xx,hrsp_5xx,hrsp_other,hanafail,"
    "req_rate,req_rate_max,req_tot,cli_abrt,srv_abrt,comp_in,comp_out,comp_byp,comp_rsp,"
    "lastsess,last_chk,last_agt,qtime,ctime,rtime,ttime,agent_status,agent_code,"
    "agent_duration,check_desc,agent_desc,check_rise,check_fall,check_health,agent_rise,"
    "agent_fall,agent_health,addr,cookie,mode,algo,conn_rate,conn_rate_max,conn_tot,"
    "intercepted,dcon,dses,wrew,connect,reuse,cache_lookups,cache_hits,srv_icur,src_ilim,"
    "qtime_max,ctime_max,rtime_max,ttime_max,eint,idle_conn_cur,safe_conn_cur,"
    "used_conn_cur,need_conn_est,uweight,agg_server_status,agg_server_check_status,"
    "agg_check_status,-,ssl_sess,ssl_reused_sess,ssl_failed_handshake,h2_headers_rcvd,"
    "h2_data_rcvd,h2_settings_rcvd,h2_rst_stream_rcvd,h2_goaway_rcvd,"
    "h2_detected_conn_protocol_errors,h2_detected_strm_protocol_errors,"
    "h2_rst_stream_resp,h2_goaway_resp,h2_open_connections,h2_backend_open_streams,"
    "h2_total_connections,h2_backend_total_streams,h1_open_connections,h1_open_streams,"
    "h1_total_connections,h1_total_streams,h1_bytes_in,h1_bytes_out,h1_spliced_bytes_in,"
    "h1_spliced_bytes_out,\n"
    "web,web-host1,0,0,0,0,,0,0,0,,0,,0,0,0,0,no check,1,1,0,,,1,,,1,3,1,,0,,2,0,,0,,,,0,"
    "0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,10.77.0.1:8000,,http,,,,,,,,0,0,0,,,"
    "0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n"
    "web,web-host2,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,1,1,0,0,,1,3,2,,0,,2,0,,0,L4CON,"
    ",0,0,0,0,0,0,0,,,,0,0,0,,,,,-1,Connection refused,,0,0,0,0,,,,"
    "Layer4 connection problem,,1,2,0,,,,10.77.0.2:8000,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,"
    "0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n"
    "web,web-host3,0,0,0,0,,0,0,0,,0,,0,0,0,0,DOWN,1,1,0,1,1,1,1,,1,3,3,,0,,2,0,,0,"
    "* L4TOUT,,250,0,0,0,0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,Layer4 timeout,,1,2,0,,,,"
    "10.77.0.3:8000,,http,,,,,,,,0,0,0,,,0,,0,0,0,0,0,0,0,0,1,1,,,,-,0,0,0,,,,,,,,,,,,,,,"
    ",,,,,,,\n"
    "web,slot1,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,1,1,0,0,0,1,1,,1,3,4,,0,,2,0,,0,,,,0,0,0,"
    "0,0,0,,,,0,0,0,,,,,-1,,,0,0,0,0,,,,,,,,,,,,0.0.0.0:8000,,http,,,,,,,,0,0,0,,,0,,0,0,"
    "0,0,0,0,0,0,0,1,,,,-,0,0,0,,,,,,,,,,,,,,,,,,,,,,\n"
    "\n"
)

#: get weight web/web-host1
WEIGHT = "\n1 (initial 1)\n\n"

#: show cli level
CLI_LEVEL = "\n[6]: admin\n\n"

#: set server web/slot1 addr 10.77.0.5 port 8000
SET_ADDR = (
    "\n"
    "[4]: IP changed from '0.0.0.0' to '10.77.0.5',"
    " no need to change the port by 'stats socket command'\n"
    "\n"
)

#: set server web/nope state ready
NO_SUCH_SERVER = "\n[3]: No such server.\n\n"

#: show servers state nope
NO_BACKEND = "\n[3]: Can't find backend.\n\n"

#: show stat nope 4 -1
NO_PROXY = "\n[3]: No such proxy.\n\n"

#: bogus
UNKNOWN_COMMAND = (
    "\n"
    "[6]: Unknown command, but maybe one of the following ones is a better match:\n"
    "  show fd [num]                           : dump list of file descriptors in use or "
    "a specific one\n"
    "  show libs                               : show loaded object files and libraries\n"
    "  show pools                              : report information about the memory pool"
    "s usage\n"
    "  show sess [id]                          : report the list of current sessions or d"
    "ump this exact session\n"
    "  user                                    : lower the level of the current CLI sessi"
    "on to user\n"
    "  help [<command>]                        : list matching or all commands\n"
    "  prompt                                  : toggle interactive mode with prompt\n"
    "  quit                                    : disconnect\n"
    "\n"
)

#: set server web/web-host1 state sideways
BAD_STATE = "\n[3]: 'set server <srv> state' expects 'ready', 'drain' and 'maint'.\n\n"

#: operator: set server web/web-host2 state ready
OPERATOR_SET_STATE = "\n[3]: Permission denied\n\n"


def test_servers_state_reads_each_server() -> None:
    servers = parse_servers_state(parse_answer("show servers state web", SERVERS_STATE))
    by_name = {s.name: s for s in servers}
    assert [s.name for s in servers] == ["web-host1", "web-host2", "web-host3", "slot1"]

    host1 = by_name["web-host1"]
    assert (host1.backend, host1.server_id, host1.address, host1.port) == (
        "web",
        1,
        "10.77.0.1",
        8000,
    )
    assert host1.op_state is OpState.RUNNING and host1.up and host1.serving
    assert host1.has_check and not host1.check_enabled  # 'disable health' was sent
    assert host1.describe() == "web/web-host1 (10.77.0.1:8000, UP, checks disabled)"

    host2 = by_name["web-host2"]
    assert host2.op_state is OpState.STOPPED and not host2.up
    assert host2.draining and not host2.in_maint and not host2.serving
    assert host2.has_check and host2.check_enabled
    assert host2.status_word() == "DOWN, draining"

    slot = by_name["slot1"]
    assert slot.address == "0.0.0.0" and slot.in_maint and not slot.up
    assert slot.admin_flags == 0x05  # forced maintenance + 'disabled' in the configuration
    assert slot.status_word() == "MAINT"


def test_stat_reads_status_sessions_and_check_text() -> None:
    stats = {s.name: s for s in parse_stat(parse_answer("show stat web 4 -1", STAT))}
    assert set(stats) == {"web-host1", "web-host2", "web-host3", "slot1"}  # no BACKEND row
    assert stats["web-host1"].status == "no check"
    assert stats["web-host2"].status == "DOWN" and stats["web-host2"].sessions == 0
    assert stats["web-host2"].check_text() == (
        "L4CON: Layer4 connection problem: Connection refused"
    )
    # "* L4TOUT": a check is under way; the status shown is the last one's
    assert stats["web-host3"].check_status == "L4TOUT"
    assert stats["slot1"].status == "MAINT"
    assert stats["slot1"].check_text() == "no check result yet"


def test_plain_answers() -> None:
    assert parse_weight(parse_answer("get weight web/web-host1", WEIGHT)) == (1, 1)
    assert parse_answer("show cli level", CLI_LEVEL).strip() == "admin"
    notice = parse_answer("set server web/slot1 addr 10.77.0.5 port 8000", SET_ADDR)
    assert notice.startswith("IP changed from '0.0.0.0' to '10.77.0.5'")


@pytest.mark.parametrize(
    ("command", "raw", "expected"),
    [
        (
            "set server web/nope state ready",
            NO_SUCH_SERVER,
            "HAProxy refused 'set server web/nope state ready': No such server.",
        ),
        (
            "show servers state nope",
            NO_BACKEND,
            "HAProxy refused 'show servers state nope': Can't find backend.",
        ),
        ("show stat nope 4 -1", NO_PROXY, "HAProxy refused 'show stat nope 4 -1': No such proxy."),
        ("bogus", UNKNOWN_COMMAND, "HAProxy refused 'bogus': unknown command"),
        (
            "set server web/web-host1 state sideways",
            BAD_STATE,
            "HAProxy refused 'set server web/web-host1 state sideways': 'set server <srv> state' "
            "expects 'ready', 'drain' and 'maint'.",
        ),
        (
            "set server web/web-host2 state ready",
            OPERATOR_SET_STATE,
            "HAProxy refused 'set server web/web-host2 state ready': permission denied (the stats "
            "socket's level is too low; a cutover needs 'level admin')",
        ),
    ],
)
def test_complaints_become_one_line_errors(command: str, raw: str, expected: str) -> None:
    with pytest.raises(HaproxyError) as caught:
        parse_answer(command, raw)
    assert str(caught.value) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "not format 1"),
        ("2\n# be_id be_name\n3 web\n", "not format 1"),
        ("1\n3 web 1 web-host1\n", "no header line"),
        ("1\n# be_id be_name srv_id srv_name\n3 web x web-host1\n", "does not parse"),
    ],
)
def test_malformed_servers_state_is_an_error(text: str, message: str) -> None:
    with pytest.raises(HaproxyError, match=message):
        parse_servers_state(text)


def test_malformed_stat_and_weight_are_errors() -> None:
    with pytest.raises(HaproxyError, match="no header line"):
        parse_stat("web,web-host1,0\n")
    with pytest.raises(HaproxyError, match="does not parse"):
        parse_stat("# pxname,svname,scur,status\nweb,web-host1,many,UP\n")
    with pytest.raises(HaproxyError, match="'get weight' answer does not parse"):
        parse_weight("heavy")

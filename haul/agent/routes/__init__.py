"""The agent's routes, one module (and one RouteTable) per area of the API."""

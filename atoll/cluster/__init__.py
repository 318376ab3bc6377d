"""Many hosts, one API (docs/cluster.md): nodes register in the shared PostgreSQL and heartbeat
(``registry``, ``heartbeat``); a node gone silent is marked down and its sandboxes ``failed``
(``liveness``) by one process of the cluster at a time (``leader``: an advisory lock)."""

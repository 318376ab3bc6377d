"""The SSH gateway (agent-services §4): per-access credentials (``access``), their HTTP routes
(``routes``) and the asyncssh server that lets a real OpenSSH client into a sandbox
(``gateway``)."""

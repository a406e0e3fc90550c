"""Network egress helpers shared by the executor and the control plane (the SSRF guard for server-side fetches)."""

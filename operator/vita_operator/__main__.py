"""python -m vita_operator: the operator as the image runs it (liveness endpoint; with leader election, one active
replica among several)."""

import os
import socket
import sys
import urllib.parse
import uuid

import kopf.cli

from .controller import metrics
from .controller.config import NAMESPACE_ENV, Settings, watched_namespaces
from .controller.leader import LEADER_ELECTION_ENV, become_leader


def main() -> None:
    liveness = os.environ.get("VITA_OPERATOR_LIVENESS", "http://0.0.0.0:8081/healthz")
    if os.environ.get(LEADER_ELECTION_ENV) == "true":  # a standby blocks here until the Lease is its own
        if port := Settings.from_env().metrics_port:
            metrics.serve(port)  # vita_operator_leader 0 until then: a scrape target, not a down one
        become_leader(os.environ.get("HOSTNAME") or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}",
                      urllib.parse.urlparse(liveness).port)
    args = ["run", "--standalone", "-m", "vita_operator.controller.handlers", f"--liveness={liveness}"]
    args.append(f"--log-format={os.environ.get('VITA_OPERATOR_LOG_FORMAT', 'plain')}")  # plain, full or json
    # One namespace, a comma-separated list (the chart's watchNamespaces), or all of them.
    namespaces = watched_namespaces(os.environ.get(NAMESPACE_ENV))
    args += [a for n in namespaces for a in ("--namespace", n)] if namespaces else ["--all-namespaces"]
    sys.exit(kopf.cli.main(args + sys.argv[1:]))


if __name__ == "__main__":
    main()

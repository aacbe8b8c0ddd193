"""python -m vita_operator: the operator as the image runs it (single replica, liveness endpoint)."""

import os
import sys

import kopf.cli


def main() -> None:
    liveness = os.environ.get("VITA_OPERATOR_LIVENESS", "http://0.0.0.0:8081/healthz")
    args = ["run", "--standalone", "-m", "vita_operator.handlers", f"--liveness={liveness}"]
    args.append(f"--log-format={os.environ.get('VITA_OPERATOR_LOG_FORMAT', 'plain')}")  # plain, full or json
    namespace = os.environ.get("VITA_OPERATOR_NAMESPACE")
    args += ["--namespace", namespace] if namespace else ["--all-namespaces"]
    sys.exit(kopf.cli.main(args + sys.argv[1:]))


if __name__ == "__main__":
    main()

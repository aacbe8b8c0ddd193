"""python -m vita_trainer.train (what torchrun starts in trainer pods)."""

import sys

from ..errors import VitaError
from .main import main
from .termination import EXIT_VITA_ERROR, write_failure

try:
    main()
except VitaError as e:
    # Said in the pod's termination message, so the operator retries only what another attempt can fix.
    write_failure(type(e).__name__, str(e), e.retryable)
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(EXIT_VITA_ERROR)
except SystemExit as e:
    if e.code == 2:  # argparse's usage error (it printed which flag): as permanent as a bad config
        write_failure("UsageError", "the trainer rejected its arguments; the pod log names the flag", False)
    raise

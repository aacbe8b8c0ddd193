"""python -m vita_trainer.train (what torchrun starts in trainer pods)."""

import logging
import os
import sys

from vita_api.errors import OutOfMemory, VitaError
from .main import main
from vita_api.termination import EXIT_OUT_OF_MEMORY, EXIT_VITA_ERROR, write_failure

try:
    main()
except OutOfMemory as e:
    # Every rank that ran out writes the same facts; the operator's next attempt halves the micro-batch.
    write_failure("OutOfMemory", str(e), True, outOfMemory={
        "step": e.step, "perDeviceTrainBatchSize": e.micro_batch, "gradientAccumulationSteps": e.accumulation})
    print(f"OutOfMemory: {e}", file=sys.stderr)
    sys.exit(EXIT_OUT_OF_MEMORY)
except VitaError as e:
    # Said in the pod's termination message, so the operator retries only what another attempt can fix.
    write_failure(type(e).__name__, str(e), e.retryable)
    print(f"{type(e).__name__}: {e}", file=sys.stderr)
    sys.exit(EXIT_VITA_ERROR)
except SystemExit as e:
    if e.code == 2:  # argparse's usage error (it printed which flag): as permanent as a bad config
        write_failure("UsageError", "the trainer rejected its arguments; the pod log names the flag", False)
    raise

# The stage is done and its outputs, summary and termination message are written. Leave without the interpreter's
# teardown: it destroys C++ objects that DeepSpeed and torch.distributed still reference (gloo/NCCL worker threads
# behind Python references that destroy_process_group cannot drop), and a joinable std::thread destroyed there
# aborts the rank ("terminate called without an active exception", SIGABRT) -- in a pod, a failed job and a
# needless retry. bench/stress_exit.py --resume reproduced it (1 in 5 resumed runs) before this exit.
if "wandb" in sys.modules:  # the one atexit hook that matters here: mark the W&B run finished
    sys.modules["wandb"].finish()
logging.shutdown()
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)

"""The test harness that tests/, bench/ and hack/ share: a real control plane and the Kubeflow stack as processes,
a kmock API emulator, a Hugging Face Hub on 127.0.0.1, Kubernetes tool binaries, and the operator scenarios' data."""

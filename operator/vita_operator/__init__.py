"""Kubernetes operator for VitaTrainingRun: one Kubeflow PyTorchJob per stage, in sequence."""

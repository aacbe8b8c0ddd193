"""Kubernetes operator for VitaTrainingRun: one Kubeflow PyTorchJob or TrainJob per stage, in sequence."""

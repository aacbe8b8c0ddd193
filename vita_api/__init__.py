"""The contract between the operator and the trainer, torch-free: the VitaTrainingRun spec, the stage presets,
the stage plan, module groups, the OOM policy, the termination message, errors and shared constants.

Imports only the standard library, pydantic and PyYAML (tests/test_deploy.py checks it): the operator image
installs this package with `pip install .[operator]` and no torch.
"""

"""The run's claims exist and fit its node count before any job is created."""

import copy

from tests.test_operator_builder_crd import FULL
from vita_api.spec import VitaTrainingRunSpec
from vita_operator.core.volumes import claim_names, claim_problems


def claim(*modes):
    return {"spec": {"accessModes": list(modes)}, "status": {"phase": "Bound", "accessModes": list(modes)}}


def test_multi_node_runs_need_shared_claims_and_missing_claims_are_named():
    spec = VitaTrainingRunSpec.model_validate(FULL)  # stage 1 runs on 4 nodes
    assert claim_names(spec) == ["vita-data", "vita-ckpt"]
    assert claim_problems(spec, {"vita-data": claim("ReadOnlyMany"), "vita-ckpt": claim("ReadWriteMany")}) == []
    (problem,) = claim_problems(spec, {"vita-data": claim("ReadWriteMany"), "vita-ckpt": claim("ReadWriteOnce")})
    assert "spec.volumes.checkpoints: claim vita-ckpt is ReadWriteOnce" in problem and "4 nodes" in problem
    assert "ReadWriteMany" in problem and "resources.nodes: 1" in problem
    (missing,) = claim_problems(spec, {"vita-data": None, "vita-ckpt": claim("ReadWriteMany")})
    assert "PersistentVolumeClaim vita-data does not exist" in missing
    one_node = copy.deepcopy(FULL)
    one_node["resources"]["nodes"] = 1
    assert claim_problems(VitaTrainingRunSpec.model_validate(one_node),
                          {"vita-data": claim("ReadWriteOnce"), "vita-ckpt": claim("ReadWriteOnce")}) == []

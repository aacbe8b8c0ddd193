-- Argo CD health check for vita.training.dev/VitaTrainingRun. Install it in argocd-cm under
-- resource.customizations.health.vita.training.dev_VitaTrainingRun (README, "Argo CD and Flux").
-- It reads the conditions the operator keeps: Stalled (Blocked, Failed), Reconciling (working toward the end),
-- Ready; a spec the operator has not read yet is Progressing.
local hs = {status = "Progressing", message = "Waiting for the operator to read the run"}
if obj.status == nil then
  return hs
end
local generation = obj.metadata and obj.metadata.generation
if generation ~= nil and (obj.status.observedGeneration == nil or obj.status.observedGeneration < generation) then
  return hs
end
local conditions = {}
for _, c in ipairs(obj.status.conditions or {}) do
  conditions[c.type] = c
end
local function is_true(ctype)
  return conditions[ctype] ~= nil and conditions[ctype].status == "True"
end
hs.message = obj.status.message or ""
if is_true("Stalled") then
  hs.status = "Degraded"
elseif obj.status.phase == "Suspended" then
  hs.status = "Suspended"
elseif is_true("Reconciling") then
  hs.status = "Progressing"
elseif is_true("Ready") then
  hs.status = "Healthy"
end
return hs

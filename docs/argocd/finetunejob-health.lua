-- Argo CD health check for kubeft.io/FineTuneJob. Install it in the argocd-cm ConfigMap:
--   data:
--     resource.customizations.health.kubeft.io_FineTuneJob: |
--       <this file>
-- It reads the operator's kstatus conditions (Ready, Stalled) and the phase:
--   Healthy      the job succeeded (Ready=True): its artifacts are in storage
--   Degraded     it failed, or waits for someone to fix something (Stalled=True): the reason says what
--   Suspended    spec.suspend is true
--   Progressing  placed, training, or waiting for something that comes by itself (a dataset, quota)
local hs = {status = "Progressing", message = "waiting for the kubeft operator"}
if obj.status == nil or next(obj.status) == nil then
  return hs
end

local function condition(kind)
  if obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == kind then
      return c
    end
  end
  return nil
end

local generation = obj.metadata and obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and observed ~= nil and observed < generation then
  hs.message = "the operator has not acted on the latest spec yet"
  return hs
end

local phase = obj.status.phase or ""
local message = obj.status.message or ""
local ready = condition("Ready")
local stalled = condition("Stalled")
if phase == "Succeeded" or (ready ~= nil and ready.status == "True") then
  hs.status = "Healthy"
  hs.message = message
elseif phase == "Failed" or (stalled ~= nil and stalled.status == "True") then
  hs.status = "Degraded"
  if stalled ~= nil and stalled.status == "True" then
    hs.message = stalled.reason .. ": " .. (stalled.message or "")
  else
    hs.message = message
  end
elseif phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = message
else
  hs.message = phase .. ": " .. message
end
return hs

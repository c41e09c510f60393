-- Argo CD health of a VirtualService (lvs.dev), from the status the
-- controller writes: Ready sums up Accepted, Programmed and Healthy;
-- Stalled says only a person can help; Reconciling that the directors are
-- still applying the current generation. Lua 5.1, as Argo CD runs it.
local hs = { status = "Progressing", message = "waiting for lvs-controller" }
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
if generation ~= nil and obj.status.observedGeneration ~= generation then
  hs.message = "lvs-controller has not observed generation " .. generation .. " yet"
  return hs
end
local conditions = {}
for _, condition in ipairs(obj.status.conditions or {}) do
  conditions[condition.type] = condition
end
local function said(condition)
  return condition.reason .. ": " .. (condition.message or "")
end
local ready, stalled, reconciling = conditions["Ready"], conditions["Stalled"], conditions["Reconciling"]
if ready == nil then
  return hs
end
if ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message
elseif stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = said(stalled)
elseif reconciling ~= nil and reconciling.status == "True" then
  hs.message = said(reconciling)
else
  -- Programmed, but no real server passes its health check (or none at all).
  hs.status = "Degraded"
  hs.message = said(ready)
end
return hs

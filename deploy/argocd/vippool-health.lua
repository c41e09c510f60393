-- Argo CD health of a VipPool (lvs.dev): Valid says whether every address
-- entry parses (the others are used all the same). Lua 5.1, as Argo CD runs it.
local hs = { status = "Progressing", message = "waiting for lvs-controller" }
if obj.status == nil or obj.status.conditions == nil then
  return hs
end
for _, condition in ipairs(obj.status.conditions) do
  if condition.type == "Valid" then
    if condition.status == "True" then
      hs.status = "Healthy"
    else
      hs.status = "Degraded"
    end
    hs.message = obj.status.used .. " used, " .. obj.status.free .. " free; " .. (condition.message or "")
  end
end
return hs

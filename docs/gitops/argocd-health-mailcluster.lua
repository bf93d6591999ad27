-- Argo CD health check for mailshard.io/MailCluster: healthy when every shard is Ready.
local hs = { status = "Progressing", message = "Waiting for the operator to observe this cluster" }
if obj.status == nil then
  return hs
end
local generation = obj.metadata.generation
if obj.status.observedGeneration ~= nil and generation ~= nil and obj.status.observedGeneration < generation then
  hs.message = "The operator has not yet observed generation " .. generation
  return hs
end
local conditions = {}
if obj.status.conditions ~= nil then
  for _, condition in ipairs(obj.status.conditions) do
    conditions[condition.type] = condition
  end
end
local function is_true(kind)
  return conditions[kind] ~= nil and conditions[kind].status == "True"
end
local shards = obj.status.shards or 0
local ready = obj.status.readyShards or 0
if is_true("Stalled") then
  hs.status = "Degraded"
  hs.message = conditions["Stalled"].message or "The operator cannot make progress without a human"
elseif is_true("Degraded") then
  hs.status = "Degraded"
  hs.message = conditions["Degraded"].message or "Some shards are degraded"
elseif is_true("Ready") then
  hs.status = "Healthy"
  hs.message = ready .. " of " .. shards .. " shards ready"
else
  hs.status = "Progressing"
  hs.message = ready .. " of " .. shards .. " shards ready"
end
return hs

-- Argo CD health check for mailshard.io/MailShard.
-- Reads the operator's kstatus-style conditions; never reports Degraded while the pair is
-- being built or rolled (the operator sets Reconciling, not Degraded, then).
local hs = { status = "Progressing", message = "Waiting for the operator to observe this shard" }
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
local function message_of(kind, fallback)
  if conditions[kind] ~= nil and conditions[kind].message ~= nil and conditions[kind].message ~= "" then
    return conditions[kind].message
  end
  return fallback
end
if is_true("Stalled") then
  hs.status = "Degraded"
  hs.message = message_of("Stalled", "The operator cannot make progress without a human")
elseif is_true("FailingOver") then
  hs.status = "Progressing"
  hs.message = message_of("FailingOver", "Failing over")
elseif is_true("Degraded") then
  hs.status = "Degraded"
  hs.message = message_of("Degraded", "A member is unavailable")
elseif is_true("Ready") then
  hs.status = "Healthy"
  hs.message = message_of("Ready", "Both members are ready")
else
  hs.status = "Progressing"
  hs.message = message_of("Reconciling", message_of("Ready", "Reconciling"))
end
return hs

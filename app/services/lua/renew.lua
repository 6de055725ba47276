-- Extend the leases a worker still owns.
-- KEYS: active, owners
-- ARGV: lease_ms, then pairs (task_id, token)
-- Returns the ids whose lease the token no longer owns (swept and requeued, or finished): the
-- worker must stop counting on them.
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local lost = {}
for i = 2, #ARGV, 2 do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id) == ARGV[i + 1] and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
  else
    lost[#lost + 1] = id
  end
end
return lost

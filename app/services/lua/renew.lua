-- Extend the leases a worker still owns.
-- KEYS: active, owners
-- ARGV: worker_id, lease_ms, task_id...
-- Returns the ids the worker no longer owns (swept and requeued, or finished): it must stop
-- treating them as its own.
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
local lost = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[2], id) == ARGV[1] and redis.call('ZSCORE', KEYS[1], id) then
    redis.call('ZADD', KEYS[1], 'XX', deadline, id)
  else
    lost[#lost + 1] = id
  end
end
return lost

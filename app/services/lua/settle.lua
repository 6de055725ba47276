-- Make the leases follow what the database just committed, in one call: ended attempts and
-- refused claims give their leases up, started attempts take theirs.
-- KEYS: active, owners, then one queue key per lease to hold (aligned with the held pairs)
-- ARGV: lease_ms, n_released, then n_released pairs (task_id, token) to release, then pairs
--       (task_id, token) to hold
-- Release: only the named owner's lease goes (an empty token: whoever holds it, the database
-- says the task is not running at all). A late message from a superseded attempt must not free
-- the lease of the attempt that replaced it.
-- Hold: the started attempt gets the lease whatever Redis did meanwhile (its claim may have
-- lapsed and been requeued by a slow start), and any queued copy of its task is removed, so the
-- database's running attempt and Redis's lease always go together.
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[1])
local first_held = 3 + 2 * tonumber(ARGV[2])
local released = 0
for i = 3, first_held - 1, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local owner = redis.call('HGET', KEYS[2], id)
  if token == '' or owner == false or owner == token then
    released = released + redis.call('ZREM', KEYS[1], id)
    redis.call('HDEL', KEYS[2], id)
  end
end
local n = 0
for i = first_held, #ARGV, 2 do
  local id = ARGV[i]
  n = n + 1
  redis.call('ZREM', KEYS[2 + n], id)
  redis.call('ZADD', KEYS[1], deadline, id)
  redis.call('HSET', KEYS[2], id, ARGV[i + 1])
end
return released

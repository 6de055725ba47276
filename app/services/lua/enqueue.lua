-- Make tasks ready: add each to its type's queue and leave a wake-up token for idle workers.
-- KEYS: active, then pairs (queue, wake) per distinct type
-- ARGV: aging_band_us, now_us ('' = the Redis clock; tests pass a clock of their own),
--       then triples (pair_index, task_id, priority)
-- Score = (10 - priority) * aging_band_us + now_us: with a huge band (aging off) this is strict
-- priority then FIFO; with a small band a waiting task gains one level per band.
-- A task that holds a lease (in active) is being run and is not queued twice; ZADD NX keeps the
-- position of a task already queued.
local now_us = tonumber(ARGV[2])
if not now_us then
  local t = redis.call('TIME')
  now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local band = tonumber(ARGV[1])
local added = 0
for i = 3, #ARGV, 3 do
  local pair = tonumber(ARGV[i])
  local id = ARGV[i + 1]
  local priority = tonumber(ARGV[i + 2])
  if not redis.call('ZSCORE', KEYS[1], id) then
    local queue = KEYS[2 + pair * 2]
    local wake = KEYS[3 + pair * 2]
    added = added + redis.call('ZADD', queue, 'NX', (10 - priority) * band + now_us, id)
    redis.call('LPUSH', wake, '1')
    redis.call('LTRIM', wake, 0, 9999)
  end
end
return added

-- Take one request's tokens from a token bucket (rate limits per key and scope, app/api/limits.py).
-- KEYS[1]: the bucket, a HASH {tokens, at_ms} (RedisKeys.rate_limit)
-- ARGV[1]: rate, tokens added per second
-- ARGV[2]: capacity, the most tokens a bucket holds (the burst)
-- ARGV[3]: cost of this request in tokens
-- Returns {1, 0} when the request may pass, {0, ms} when it must wait ms before it would.
-- Time comes from Redis, so API processes on several machines share one clock. The bucket
-- expires once it would be full again: an idle caller costs no memory.
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000 + math.floor(tonumber(now_parts[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at_ms')
local tokens = tonumber(state[1]) or capacity
local at = tonumber(state[2]) or now
-- Refill for the time since the last request, never past the capacity.
tokens = math.min(capacity, tokens + math.max(0, now - at) * rate / 1000)
local allowed, wait = 1, 0
if tokens >= cost then
  tokens = tokens - cost
else
  allowed = 0
  wait = math.ceil((cost - tokens) * 1000 / rate)
end
-- Store the bucket as it is now (a refused request spends nothing, but the refill is kept).
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at_ms', now)
redis.call('PEXPIRE', KEYS[1], math.ceil(capacity * 1000 / rate) + 1000)
return {allowed, wait}

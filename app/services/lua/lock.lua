-- Take or keep a lock with an expiry (the sweeper's: one API process does the periodic work).
-- KEYS: lock
-- ARGV: holder (a process's random id), ttl_ms
-- Taking and renewing are one step: a GET followed by PEXPIRE could renew a lock that expired
-- and went to another process in between, leaving two leaders.
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return 1
end
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0

-- Records one exchange of a conversation (moltgate shared tier,
-- conversations.rs), atomically.
-- KEYS[1]: turns (list of JSON turns, oldest first); KEYS[2]: state (hash);
-- KEYS[3]: meta (hash: started, Redis ms).
-- ARGV[1] turns kept; ARGV[2] ttl (ms since the conversation started);
-- ARGV[3] idle (ms since its last exchange); ARGV[4] most state keys;
-- ARGV[5] n new turns; ARGV[6 .. 5+n] the turns; then state updates as
-- key, value pairs (an empty value removes the key).
-- Returns the number of state updates dropped (over the key bound).
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep, ttl, idle = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local max_keys, n = tonumber(ARGV[4]), tonumber(ARGV[5])
local started = tonumber(redis.call('HGET', KEYS[3], 'started'))
if started and now - started >= ttl then
  -- Outlived its ttl (its keys were about to expire): start over.
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
  started = nil
end
if not started then
  started = now
  redis.call('HSET', KEYS[3], 'started', now)
end
for i = 1, n do redis.call('RPUSH', KEYS[1], ARGV[5 + i]) end
if n > 0 then redis.call('LTRIM', KEYS[1], -keep, -1) end
local dropped = 0
for i = 6 + n, #ARGV - 1, 2 do
  local k, v = ARGV[i], ARGV[i + 1]
  if v == '' then
    redis.call('HDEL', KEYS[2], k)
  elseif redis.call('HEXISTS', KEYS[2], k) == 1 or redis.call('HLEN', KEYS[2]) < max_keys then
    redis.call('HSET', KEYS[2], k, v)
  else
    dropped = dropped + 1
  end
end
local left = math.max(1, math.min(idle, ttl - (now - started)))
for i = 1, 3 do redis.call('PEXPIRE', KEYS[i], left) end
return dropped

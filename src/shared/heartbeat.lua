-- This node's heartbeat (moltgate shared tier, see mod.rs).
-- KEYS[1]: sorted set of live nodes, scored by last probe (Redis ms).
-- ARGV[1]: this node's id; ARGV[2]: ms after which a silent node is dropped.
-- Returns the number of live nodes.
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = tonumber(ARGV[2])
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - expiry)
redis.call('PEXPIRE', KEYS[1], expiry)
return redis.call('ZCARD', KEYS[1])

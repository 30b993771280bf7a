"""Lua scripts of RedisStreamBus that read: a stream's state without its entries, and an entry
found by a field's value (with a write that a WAIT after it confirms the entry by)."""

from __future__ import annotations

__all__ = ["FIND_ENTRY", "STREAM_STATE"]

# KEYS: stream. ARGV: a group name no one uses (random), 1 to read each group's oldest pending id
# (an XPENDING per group holding entries; 0: false for every group), the one group to report
# ('' for every group: a writer may add thousands, and each reported costs the server and caller). A stream's length, last generated id and
# groups without the entries: XINFO STREAM replies with the first and last entry whole (a writer's
# 50 MB entry travels on every call), so the last id is read as the last-delivered id of a group
# made at '$' and destroyed in the same script (not replicated: together they change nothing).
# Returns false for a missing key, else {length, last_id, groups}; a group is {name, consumers,
# pending, last_delivered, lag (false: unknown), has_lag (0: the server has no lag field),
# oldest pending id (false: none)}. A key of another type raises WRONGTYPE.
STREAM_STATE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.set_repl then redis.set_repl(redis.REPL_NONE) end
redis.call('XGROUP', 'CREATE', KEYS[1], ARGV[1], '$')
local rows = redis.call('XINFO', 'GROUPS', KEYS[1])
redis.call('XGROUP', 'DESTROY', KEYS[1], ARGV[1])
local last, out = '0-0', {}
for _, row in ipairs(rows) do
  -- row[2] is the group's name: only the probe and the groups asked for are looked at
  if row[2] == ARGV[1] or ARGV[3] == '' or row[2] == ARGV[3] then
  local g, has_lag = {}, 0
  for i = 1, #row, 2 do
    g[row[i]] = row[i + 1]
    if row[i] == 'lag' then has_lag = 1 end
  end
  if g['name'] == ARGV[1] then
    last = g['last-delivered-id']
  else
    local oldest = false
    if ARGV[2] == '1' and tonumber(g['pending']) > 0 then
      local first = redis.call('XPENDING', KEYS[1], g['name'], '-', '+', 1)
      if first[1] then oldest = first[1][1] end
    end
    out[#out + 1] = {g['name'], g['consumers'], g['pending'], g['last-delivered-id'],
                     g['lag'] or false, has_lag, oldest}
  end
  end
end
return {redis.call('XLEN', KEYS[1]), last, out}
"""

# KEYS: stream[, a key of the stream's hash slot no stream takes]. ARGV: field name, value, start
# id, page size, pages, bytes. Looks for the first entry at or after start whose field holds
# value, at most pages x page size entries and about bytes of fields per call (a long inbox, or
# one of huge entries, is read over several calls, never in one long script). Returns {id, false} when found, {false, next start} when there is more to read,
# {false, false} when there is not. With the second key, a found entry writes it (expiring in a
# minute) so that a WAIT sent after the script on the same connection counts the entry too:
# replicas that acknowledge that write hold everything the server had before it.
FIND_ENTRY = """
local start, page_size, budget = ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[6])
for _ = 1, tonumber(ARGV[5]) do
  local page = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', page_size)
  for _, entry in ipairs(page) do
    local fields = entry[2]
    for i = 1, #fields, 2 do
      if fields[i] == ARGV[1] and fields[i + 1] == ARGV[2] then
        if KEYS[2] then redis.call('SET', KEYS[2], entry[1], 'PX', 60000) end
        return {entry[1], false}
      end
      budget = budget - #fields[i] - #fields[i + 1] - 16
    end
  end
  if #page < page_size then return {false, false} end
  start = '(' .. page[#page][1]
  if budget <= 0 then return {false, start} end
end
return {false, start}
"""

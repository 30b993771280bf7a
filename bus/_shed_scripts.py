"""Lua scripts of admission inside Redis (:class:`bus.Shedding`): which undelivered entries of a
flooded inbox its group skips, and the skip with its record in one write."""

from __future__ import annotations

from ._scripts import _PARSE

__all__ = ["SHED", "SHED_SKIP"]

# Admission inside Redis (actors/hosting/admission.py): a flooded inbox's excess is skipped by
# its group, never transferred to the actor. SHED only reads; SHED_SKIP moves the group.
_GROUP = """
local function group_of(stream, name)
  for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
    local info = {}
    for i = 1, #g, 2 do info[g[i]] = g[i + 1] end
    if info['name'] == name then return info end
  end
  return nil
end
"""

# KEYS: stream. ARGV: group, keep, limit, max_claims, max_bytes, needle, field, budget.
# The entries after the group's last-delivered id but the newest ``keep``, at most ``limit``,
# oldest first. Returns {n, last_delivered, first_id, last_id, then id, frame of the first
# max_claims of them whose ``field`` is at most max_bytes long and holds ``needle``}; {0} when
# there are none. The entries (the ones to shed, then the kept ones) are counted from the ids,
# walked in pages from the oldest; the walk stops once ``budget`` bytes (ids, names and values)
# have been read, so a backlog of large entries costs a bounded amount per call. A walk the
# budget stops before it reaches the kept ones relies on the group's lag counter to know that
# the entries it read are not among the newest ``keep`` (fewer are shed, the rest by later
# calls); without a lag it sheds nothing. A lag the server reports within ``keep`` ends the call
# before any walk: a backlog within the bound (the common case) costs one XINFO GROUPS, not a
# walk of it every turn. The server's lag is exact, unknown (nil: walked), or too high after a
# failover (walked); only a writer who moves the group's counters lowers it, and such a writer
# can as well move the group past every entry.
SHED = (
    _GROUP
    + """
local g = group_of(KEYS[1], ARGV[1])
if not g then return {0} end
local keep, limit, want = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
if (tonumber(g['lag']) or keep + 1) <= keep then return {0} end
local max_bytes, budget = tonumber(ARGV[5]), tonumber(ARGV[8])
local span = keep + limit
local ids, found = {}, {}
local start, spent, page, ended = '(' .. g['last-delivered-id'], 0, 1, false
while #ids < span and spent < budget do
  local ask = math.min(page, span - #ids)
  local rows = redis.call('XRANGE', KEYS[1], start, '+', 'COUNT', ask)
  for _, row in ipairs(rows) do
    local f, size, claimed = row[2], #row[1], #found >= 2 * want
    for j = 1, #f, 2 do
      size = size + #f[j] + #f[j + 1]
      if not claimed and f[j] == ARGV[7] and #f[j + 1] <= max_bytes
          and string.find(f[j + 1], ARGV[6], 1, true) then
        found[#found + 1] = #ids + 1
        found[#found + 1] = f[j + 1]
        claimed = true
      end
    end
    ids[#ids + 1] = row[1]
    spent = spent + size
  end
  if #rows < ask then
    ended = true
    break
  end
  start = '(' .. rows[#rows][1]
  page = math.max(1, math.min(256, math.floor((budget - spent) * #ids / spent)))
end
local n = 0
if ended or #ids >= span then
  n = math.min(#ids - keep, limit)
elseif tonumber(g['lag']) then
  n = math.min(tonumber(g['lag']) - keep, #ids)
end
if n <= 0 then return {0} end
local out = {n, g['last-delivered-id'], ids[1], ids[n]}
for i = 1, #found, 2 do
  if found[i] > n then break end
  out[#out + 1] = ids[found[i]]
  out[#out + 1] = found[i + 1]
end
return out
"""
)

# KEYS: stream, the streams of the appends, the fence key last (when given).
# ARGV: group, after_id, last_id, count, fence_token ("" = none), fence_ttl_ms, then the appends
# (see _PARSE) from ARGV[7]. If the group's last-delivered id is still after_id, the group skips
# to last_id (XGROUP SETID, its entries-read counter advanced by count when known) and the appends
# (the skipped run's record) are written; else nothing is written (a resent call, or the group
# moved). Returns the number of entries skipped. With a fence, nothing is written unless the
# fence key holds the token, and a resent call finding the group at last_id returns count (only
# the fence holder moves the group, so its own earlier try did), writing nothing.
SHED_SKIP = (
    _PARSE
    + _GROUP
    + """
local p = 7
while p <= #ARGV do
  local q, err = scan_append(p)
  if not q then return redis.error_reply(err) end
  p = q
end
if ARGV[5] ~= '' then
  local fence = KEYS[#KEYS]
  if redis.call('GET', fence) ~= ARGV[5] then
    return redis.error_reply('FENCED ' .. fence .. ' is not held by this owner')
  end
  redis.call('PEXPIRE', fence, ARGV[6])
end
local g = group_of(KEYS[1], ARGV[1])
if not g then return 0 end
-- under a fence held, a group already at last_id was moved by this owner's own earlier try (a
-- lost reply): report it applied, writing nothing again
if ARGV[5] ~= '' and g['last-delivered-id'] == ARGV[3] then return tonumber(ARGV[4]) end
if g['last-delivered-id'] ~= ARGV[2] then return 0 end
local read = tonumber(g['entries-read'])
if read then
  redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], ARGV[3], 'ENTRIESREAD', read + tonumber(ARGV[4]))
else
  redis.call('XGROUP', 'SETID', KEYS[1], ARGV[1], ARGV[3])
end
p = 7
while p <= #ARGV do
  xadd(p)
  p = p + 3 + 2 * tonumber(ARGV[p + 2])
end
return tonumber(ARGV[4])
"""
)

/*
 * aarm_policy.h - every path glob of one action type matched in one pass.
 *
 * The policy engine (aarm_sandbox/policy/matcher.py) turns the path conditions
 * of a profile's rules into one NFA of code points and hands it here; a DFA is
 * built from it lazily, one state at a time, as paths walk into states not
 * seen before.  A match answers which patterns match the WHOLE text, as an
 * "accept set" id: equal ids mean equal sets of matching patterns, so the
 * caller memoises its decision per id.
 *
 * Contracts for the caller:
 *  - nodes: nnodes x 4 int32 (op, arg, next1, next2):
 *      AARM_PM_CHAR      arg = code point, next1
 *      AARM_PM_NOTSLASH  any code point but '/', next1
 *      AARM_PM_ANY       any code point, next1
 *      AARM_PM_SPLIT     epsilon to next1 and next2
 *      AARM_PM_MATCH     arg = pattern id (< npatterns)
 *    starts: the entry node of each glob; every glob ends in a MATCH node.
 *  - text: width 1 (bytes, each one code point: ASCII or Latin-1) or width 4
 *    (little-endian uint32 code points, as str.encode("utf-32-le",
 *    "surrogatepass") makes them); len counts code points.
 *  - aarm_pm_match returns the accept-set id (>= 0; 0 is "no pattern"), or -1
 *    when it cannot answer (the DFA outgrew its memory budget twice in one
 *    walk, or too many distinct accept sets): the caller must then decide
 *    without this matcher.  It never answers "no match" for lack of memory.
 *  - Accept-set ids stay valid for the matcher's life (the DFA cache may be
 *    flushed; the accept sets never are).
 *  - Every call may come from any thread (a mutex serialises them);
 *    aarm_pm_free only once no thread is inside an aarm_pm_* call.
 */
#ifndef AARM_POLICY_H
#define AARM_POLICY_H

#include <stddef.h>
#include <stdint.h>

#define AARM_PM_CHAR 0
#define AARM_PM_NOTSLASH 1
#define AARM_PM_ANY 2
#define AARM_PM_SPLIT 3
#define AARM_PM_MATCH 4

struct aarm_pm;

struct aarm_pm *aarm_pm_new(const int32_t *nodes, uint32_t nnodes,
                            const uint32_t *starts, uint32_t nstarts,
                            uint32_t npatterns, size_t budget);
void aarm_pm_free(struct aarm_pm *pm);
int32_t aarm_pm_match(struct aarm_pm *pm, const void *text, size_t len, int width);
int32_t aarm_pm_accept_set(struct aarm_pm *pm, int32_t id, uint32_t *out, uint32_t max);
void aarm_pm_stats(struct aarm_pm *pm, uint64_t *out4);

#endif

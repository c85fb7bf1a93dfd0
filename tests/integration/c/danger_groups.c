/*
 * danger_groups.c - the grouped danger matching of aarm_fastpath.c against the plain
 * one-by-one loop, on random glob sets and paths (run under ASan/UBSan by the test).
 * Includes the .c to reach its static functions.  Prints "OK <n>" or the first mismatch.
 */
#include "aarm_fastpath.c"
#include <stdio.h>

static const char *PIECES[] = { "/", "/root", "/root/", "/r", "/ro", "/tmp", "/tmp/", "/tmp/ws",
                                "/tmp/ws/", "/tmp/ws/.git", "/tmp/ws/.git/", "a", ".git", "/x",
                                "/etc/shadow", "/etc", "/etc/", "" };
#define NP (sizeof(PIECES) / sizeof(PIECES[0]))
static const char *SEGS[] = { "/.git/", "/hooks", "x", "/", ".git", "/a/" };
#define NS (sizeof(SEGS) / sizeof(SEGS[0]))

static uint64_t rng = 88172645463325252ull;
static unsigned rnd(unsigned n) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (unsigned)(rng % n); }

static char *rand_text(int parts)
{
    char *s = calloc(1, 256);
    for (int i = 0; i < parts; i++)
        strcat(s, PIECES[rnd(NP)]);
    return s;
}

int main(void)
{
    long checked = 0;
    for (int round = 0; round < 3000; round++) {
        uint32_t n = rnd(12);
        struct aarm_fast_glob src[12];
        const char *segs[12][4];
        for (uint32_t i = 0; i < n; i++) {
            char *p = rand_text(1 + (int)rnd(3));
            src[i].prefix = p;
            src[i].prefix_len = (uint32_t)strlen(p);
            src[i].exact = rnd(4) == 0;
            src[i].nsegments = src[i].exact ? 0 : rnd(3);
            src[i].anchored = (int)rnd(2);
            for (uint32_t j = 0; j < src[i].nsegments; j++)
                segs[i][j] = SEGS[rnd(NS)];
            segs[i][src[i].nsegments] = NULL;
            src[i].segments = segs[i];
        }
        struct fp_kind grouped = {0}, plain = {0};
        if (copy_globs(&grouped.danger, src, n) || copy_globs(&plain.danger, src, n)) {
            printf("copy failed\n");
            return 1;
        }
        grouped.ndanger = plain.ndanger = n;
        if (group_danger(&grouped)) {
            printf("group failed\n");
            return 1;
        }
        for (int t = 0; t < 200; t++) {
            char *path = rand_text(1 + (int)rnd(4));
            size_t len = strlen(path);
            int want = 0;
            for (uint32_t i = 0; i < n && !want; i++)
                want = may_match(&plain.danger[i], path, len, 1);
            int got = danger_hit(&grouped, path, len);
            if (got != want) {
                printf("MISMATCH path=%s want=%d got=%d\n", path, want, got);
                for (uint32_t i = 0; i < n; i++)
                    printf("  glob %s exact=%d nsegs=%u anchored=%d\n", src[i].prefix, src[i].exact,
                           src[i].nsegments, src[i].anchored);
                return 1;
            }
            checked++;
            free(path);
        }
        if (!kinds_equal(&(struct fp_kind){ .enabled = 1, .danger = grouped.danger, .ndanger = n },
                         &(struct fp_kind){ .enabled = 1, .danger = grouped.danger, .ndanger = n })) {
            printf("kinds_equal is not reflexive\n");
            return 1;
        }
        free_globs(grouped.danger, grouped.ndanger);
        free(grouped.groups);
        free_globs(plain.danger, plain.ndanger);
        for (uint32_t i = 0; i < n; i++)
            free((void *)src[i].prefix);
    }
    printf("OK %ld\n", checked);
    return 0;
}

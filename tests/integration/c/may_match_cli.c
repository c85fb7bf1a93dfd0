/*
 * may_match_cli.c - the fast path's danger test for one glob at a time, for a property
 * test in Python.  Includes the .c to reach its static functions.
 * stdin, one case per line, fields separated by '\x1f':
 *   PREFIX EXACT ANCHORED PATH SEGMENT...
 * stdout: one '0' or '1' per case (may_match with danger semantics), then a newline.
 */
#include "aarm_fastpath.c"
#include <stdio.h>

int main(void)
{
    static char line[65536];
    while (fgets(line, sizeof line, stdin)) {
        size_t len = strlen(line);
        if (len && line[len - 1] == '\n')
            line[--len] = '\0';
        char *f[16];
        int nf = 0;
        for (char *p = line, *q; nf < 16; p = q + 1) {
            f[nf++] = p;
            q = strchr(p, '\x1f');
            if (!q)
                break;
            *q = '\0';
        }
        if (nf < 4)
            return 2;
        const char *segs[12];
        uint32_t ns = 0;
        for (int i = 4; i < nf && ns < 12; i++)
            segs[ns++] = f[i];
        segs[ns] = NULL;
        struct aarm_fast_glob src = { f[0], (uint32_t)strlen(f[0]), atoi(f[1]), segs, ns, atoi(f[2]) };
        struct fp_glob *g = NULL;
        if (copy_globs(&g, &src, 1))
            return 3;
        putchar(may_match(g, f[3], strlen(f[3]), 1) ? '1' : '0');
        free_globs(g, 1);
    }
    putchar('\n');
    return 0;
}

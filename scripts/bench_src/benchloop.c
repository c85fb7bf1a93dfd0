/*
 * benchloop.c - target-side workloads for scripts/bench.
 *
 * Every latency is measured inside the target with clock_gettime(CLOCK_MONOTONIC)
 * (vDSO: no syscall, so neither the seccomp filter nor strace sees it) and the
 * percentiles are computed here, so the supervisor's own startup and the
 * harness's process handling are never part of a per-decision number.
 *
 *   benchloop lat MODE PATH N BATCH WARMUP
 *       MODE: open-write    openat(PATH, O_WRONLY|O_CREAT, 0644) + close     (1 decision)
 *             create-unlink openat(PATH, O_WRONLY|O_CREAT, 0644) + close + unlink
 *                                                                  (2 decisions)
 *             open-read     openat(PATH, O_RDONLY) + close         (not intercepted)
 *             getpid        syscall(SYS_getpid)                    (not intercepted)
 *             chmod         chmod(PATH, 0600 / 0644 alternately)   (1 decision)
 *             rename        rename(PATH, PATH.b), then back         (1 decision)
 *       One sample covers BATCH iterations (per-op value = sample / BATCH), so very
 *       cheap calls are not dominated by the clock read itself. WARMUP untimed
 *       iterations run first.
 *       Prints one JSON object: p50/p90/p99/max/mean in ns per iteration.
 *
 *   benchloop fs DIR NFILES REPS
 *       Creates DIR if missing, builds DIR/src (NFILES files of 128 bytes in subdirectories of 50), then REPS
 *       times: `cp -r DIR/src DIR/dst` and `rm -rf DIR/dst`, each timed around
 *       fork+exec+wait. Prints JSON with the per-rep wall times in ns.
 *
 * BENCH_CPU=N in the environment pins the process to CPU N first; BENCH_ALLOW_FILTER=1
 * then installs an allow-everything seccomp filter (the floor of any seccomp supervisor).
 *
 * A PATH or DIR starting with "@TMPDIR" has that prefix replaced by $TMPDIR as the
 * target sees it (the sandbox gives every session its own private TMPDIR).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/prctl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void die(const char *what)
{
    fprintf(stderr, "benchloop: %s: %s\n", what, strerror(errno));
    exit(2);
}

static const char *expand(const char *arg)
{
    static char out[2][4096];
    static int k;
    const char *pfx = "@TMPDIR";
    if (strncmp(arg, pfx, strlen(pfx)) != 0) return arg;
    const char *t = getenv("TMPDIR");
    if (!t || !*t) t = "/tmp";
    char *o = out[k++ & 1];
    snprintf(o, 4096, "%s%s", t, arg + strlen(pfx));
    return o;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* nearest-rank percentile on a sorted array */
static double pct(const uint64_t *s, size_t n, double p)
{
    size_t k = (size_t)(p / 100.0 * (double)n + 0.999999);
    if (k < 1) k = 1;
    if (k > n) k = n;
    return (double)s[k - 1];
}

static int one_iter(int mode, const char *path)
{
    int fd;
    switch (mode) {
    case 0: /* open-write */
        fd = openat(AT_FDCWD, path, O_WRONLY | O_CREAT, 0644);
        if (fd < 0) return -1;
        close(fd);
        return 0;
    case 1: /* create-unlink */
        fd = openat(AT_FDCWD, path, O_WRONLY | O_CREAT, 0644);
        if (fd < 0) return -1;
        close(fd);
        if (unlink(path) < 0) return -1;
        return 0;
    case 2: /* open-read */
        fd = openat(AT_FDCWD, path, O_RDONLY);
        if (fd < 0) return -1;
        close(fd);
        return 0;
    case 4: { /* chmod: alternating modes, one decision */
        static int flip;
        return chmod(path, (flip ^= 1) ? 0600 : 0644);
    }
    case 5: { /* rename: PATH and PATH.b, back and forth, one decision */
        static int there;
        static char other[4096];
        if (!other[0]) snprintf(other, sizeof other, "%s.b", path);
        int r = there ? rename(other, path) : rename(path, other);
        there ^= 1;
        return r;
    }
    default: /* getpid: raw syscall, no libc caching */
        syscall(SYS_getpid);
        return 0;
    }
}

static int cmd_lat(int argc, char **argv)
{
    if (argc != 7) {
        fprintf(stderr, "usage: benchloop lat MODE PATH N BATCH WARMUP\n");
        return 2;
    }
    const char *mname = argv[2], *path = expand(argv[3]);
    long n = atol(argv[4]), batch = atol(argv[5]), warm = atol(argv[6]);
    int mode;
    if (!strcmp(mname, "open-write")) mode = 0;
    else if (!strcmp(mname, "create-unlink")) mode = 1;
    else if (!strcmp(mname, "open-read")) mode = 2;
    else if (!strcmp(mname, "getpid")) mode = 3;
    else if (!strcmp(mname, "chmod")) mode = 4;
    else if (!strcmp(mname, "rename")) mode = 5;
    else { fprintf(stderr, "benchloop: unknown mode %s\n", mname); return 2; }
    if (n < 1 || batch < 1 || warm < 0) { fprintf(stderr, "benchloop: bad numbers\n"); return 2; }

    long samples = n / batch;
    if (samples < 1) samples = 1;
    uint64_t *s = malloc(sizeof(uint64_t) * (size_t)samples);
    if (!s) die("malloc");

    for (long i = 0; i < warm; i++)
        if (one_iter(mode, path) < 0) die(mname);

    /* BENCH_RATE=R: start one batch every 1/R s (absolute deadlines, sleeping in
     * between), so a journal's cost is measured at a given decision rate rather than
     * flat out. */
    const char *rate_s = getenv("BENCH_RATE");
    uint64_t period = rate_s && atol(rate_s) > 0 ? 1000000000ull / (uint64_t)atol(rate_s) : 0;
    if (period)
        prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    uint64_t t_start = now_ns();
    for (long i = 0; i < samples; i++) {
        if (period) {
            uint64_t due = t_start + (uint64_t)i * period;
            struct timespec ts = { (time_t)(due / 1000000000ull), (long)(due % 1000000000ull) };
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR)
                ;
        }
        uint64_t t0 = now_ns();
        for (long j = 0; j < batch; j++)
            if (one_iter(mode, path) < 0) die(mname);
        s[i] = now_ns() - t0;
    }
    uint64_t total = now_ns() - t_start;
    double sum = 0;
    for (long i = 0; i < samples; i++)
        sum += (double)s[i];
    qsort(s, (size_t)samples, sizeof(uint64_t), cmp_u64);
    double b = (double)batch;
    printf("{\"mode\":\"%s\",\"n\":%ld,\"batch\":%ld,\"samples\":%ld,"
           "\"p50_ns\":%.1f,\"p90_ns\":%.1f,\"p99_ns\":%.1f,\"max_ns\":%.1f,"
           "\"mean_ns\":%.1f,\"avg_busy_ns\":%.1f,\"total_ns\":%llu}\n",
           mname, samples * batch, batch, samples,
           pct(s, samples, 50) / b, pct(s, samples, 90) / b, pct(s, samples, 99) / b,
           (double)s[samples - 1] / b, (double)total / (double)(samples * batch),
           sum / (double)(samples * batch), (unsigned long long)total);
    fflush(stdout);
    return 0;
}

static uint64_t run_timed(char *const argv[])
{
    uint64_t t0 = now_ns();
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        execvp(argv[0], argv);
        _exit(127);
    }
    int st;
    if (waitpid(pid, &st, 0) < 0) die("waitpid");
    uint64_t dt = now_ns() - t0;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "benchloop: %s failed (status 0x%x)\n", argv[0], st);
        exit(3);
    }
    return dt;
}

static int cmd_fs(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: benchloop fs DIR NFILES REPS\n");
        return 2;
    }
    const char *dir = expand(argv[2]);
    long nfiles = atol(argv[3]), reps = atol(argv[4]);
    if (nfiles < 1 || reps < 1 || reps > 64) { fprintf(stderr, "benchloop: bad numbers\n"); return 2; }
    char src[4096], dst[4096], p[4200];
    snprintf(src, sizeof src, "%s/src", dir);
    snprintf(dst, sizeof dst, "%s/dst", dir);
    char buf[128];
    memset(buf, 'x', sizeof buf);

    int made_dir = mkdir(dir, 0700) == 0;
    if (!made_dir && errno != EEXIST) die("mkdir DIR");
    uint64_t t0 = now_ns();
    if (mkdir(src, 0755) < 0 && errno != EEXIST) die("mkdir src");
    long per_dir = 50, ndirs = (nfiles + per_dir - 1) / per_dir;
    for (long d = 0; d < ndirs; d++) {
        snprintf(p, sizeof p, "%s/d%03ld", src, d);
        if (mkdir(p, 0755) < 0 && errno != EEXIST) die("mkdir");
        for (long f = 0; f < per_dir && d * per_dir + f < nfiles; f++) {
            snprintf(p, sizeof p, "%s/d%03ld/f%03ld.txt", src, d, f);
            int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd < 0) die("create");
            if (write(fd, buf, sizeof buf) != (ssize_t)sizeof buf) die("write");
            close(fd);
        }
    }
    uint64_t mk = now_ns() - t0;

    uint64_t cp[64], rm[64];
    for (long r = 0; r < reps; r++) {
        char *cpv[] = {"cp", "-r", src, dst, NULL};
        char *rmv[] = {"rm", "-rf", dst, NULL};
        cp[r] = run_timed(cpv);
        rm[r] = run_timed(rmv);
    }
    char *rms[] = {"rm", "-rf", src, NULL};
    run_timed(rms);
    if (made_dir) rmdir(dir);

    printf("{\"mode\":\"fs\",\"files\":%ld,\"dirs\":%ld,\"mktree_ns\":%llu,\"cp_ns\":[",
           nfiles, ndirs, (unsigned long long)mk);
    for (long r = 0; r < reps; r++) printf("%s%llu", r ? "," : "", (unsigned long long)cp[r]);
    printf("],\"rm_ns\":[");
    for (long r = 0; r < reps; r++) printf("%s%llu", r ? "," : "", (unsigned long long)rm[r]);
    printf("]}\n");
    fflush(stdout);
    return 0;
}

/* BENCH_CPU=N pins this process to CPU N before anything is measured: scripts/bench
 * gives the native, sandboxed and strace'd runs of one round the same CPU (on a VM one
 * vCPU can run syscalls 1.5-2x slower than the other for minutes at a time). */
static void pin_from_env(void)
{
    const char *c = getenv("BENCH_CPU");
    if (!c || !*c)
        return;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(atoi(c), &set);
    if (sched_setaffinity(0, sizeof(set), &set) != 0)
        die("sched_setaffinity(BENCH_CPU)");
}

/* BENCH_ALLOW_FILTER=1 installs a one-instruction seccomp filter that allows every
 * syscall: what any seccomp-based supervisor costs a call it never looks at (the
 * kernel's syscall entry takes its slow path as soon as a task has a filter). */
static void allow_filter_from_env(void)
{
    const char *f = getenv("BENCH_ALLOW_FILTER");
    if (!f || strcmp(f, "1"))
        return;
    struct sock_filter allow = BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    struct sock_fprog prog = { .len = 1, .filter = &allow };
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 ||
        syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) != 0)
        die("seccomp(allow-all)");
}

int main(int argc, char **argv)
{
    pin_from_env();
    allow_filter_from_env();
    if (argc >= 2 && !strcmp(argv[1], "lat")) return cmd_lat(argc, argv);
    if (argc >= 2 && !strcmp(argv[1], "fs")) return cmd_fs(argc, argv);
    fprintf(stderr, "usage: benchloop lat|fs ...\n");
    return 2;
}

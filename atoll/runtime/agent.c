/*
 * atoll-agent: PID 1 of every sandbox, and the fast path for running commands in it.
 *
 *   agent                  idle init: reaps orphans, ignores stray termination signals
 *   agent -- CMD ARGS...   runs CMD (the template's main process), forwards signals to it and
 *                          exits with its status, like catatonit
 *   agent --tcp PORT ...   the same, listening on 127.0.0.1:PORT instead of the socket file
 *
 * It listens on /.atoll/run/agent.sock (the sandbox's private tmpfs), or, in a gVisor sandbox,
 * whose user-space kernel the host cannot reach a socket file in, on the sandbox's own loopback,
 * which only runsc's port forwarding (through the sandbox's control socket) reaches from outside.
 * Atoll connects from the host (atoll/runtime/agent.py) and sends one request per connection; a
 * handler thread per connection starts the command (posix_spawn: a vfork and an exec) and
 * reports on it. That is all a command costs inside the sandbox, instead of a runtime process
 * (runc/crun/runsc exec) that has to re-create the sandbox's namespaces, cgroup, capabilities
 * and seccomp filter each time: the agent already holds all of them, and its children inherit
 * them. Commands are children of PID 1, so what they leave behind is too, which gVisor needs to
 * restore it from a checkpoint.
 *
 * Wire (all integers in decimal text, lines end with \n):
 *   request:  "ATL1" u32le(length) then length bytes of NUL-terminated strings:
 *             cwd, max_output_bytes, argc, argv[0..argc), then "KEY=VALUE" env overrides
 *   reply:    "R pid\n"                 the command started (pid in the sandbox)
 *             "E errno step message\n"  it could not start (e.g. chdir failed); nothing ran
 *   then:     "X status outlen errlen\n" followed by outlen + errlen bytes of output (paced:
 *             "X status outlen errlen +\n", each chunk of output then starting with "+")
 *   Atoll may send "K" (or close the connection) while the command runs: its whole session is
 *   killed, then the reply goes on as above.
 *
 * The command leads a new session; its stdout and stderr are anonymous files on the tmpfs
 * (charged to the sandbox's memory cgroup), copied to Atoll once it exits. What it leaves
 * running in the background holds no descriptor leading out of the sandbox, so the call returns
 * when the command ends and the sandbox stays checkpointable. Everything here runs inside the
 * sandbox with its privileges only: Atoll treats every byte it receives as untrusted.
 *
 * Every failure is answered "E errno step message": a decimal errno saying why, the step that
 * failed (request, cwd, exec, fork, spool, table, pid, stdin) and text for people. Atoll types
 * the failure by errno and step (atoll/runtime/agent_errors.py), never by the text. Agents from
 * before (still PID 1 of sandboxes restored from old checkpoints) answer "E keyword ...".
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CAP_SETPCAP_NR 8 /* linux/capability.h's CAP_SETPCAP */

#define RUN_DIR "/.atoll/run"
#define SOCKET_PATH RUN_DIR "/agent.sock"
#define MAX_REQUEST (8u << 20)
#define KILL_ROUNDS 3000 /* scans; with 1 ms pauses once only zombies are left */

extern char **environ;

static const int forwarded[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2, SIGWINCH, SIGCONT};
#define N_FORWARDED (sizeof(forwarded) / sizeof(forwarded[0]))

static volatile sig_atomic_t pending[65];
static volatile sig_atomic_t child_changed;

static void on_signal(int sig) {
    if (sig == SIGCHLD)
        child_changed = 1;
    else if (sig > 0 && sig < 65)
        pending[sig] = 1;
}

static void ignore_signal(int sig) { (void)sig; }

static void catch(int sig) {
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, NULL);
}

/* the signal state a command starts with: nothing blocked, nothing caught */
static void default_signals(void) {
    sigset_t none;
    sigemptyset(&none);
    for (int sig = 1; sig < 65; sig++)
        signal(sig, SIG_DFL);
    sigprocmask(SIG_SETMASK, &none, NULL);
}

/* the whole of `len` bytes through read(2) or write(2), retrying short transfers */
static int transfer_all(ssize_t (*op)(int, void *, size_t), int fd, void *data, size_t len) {
    char *p = data;
    while (len > 0) {
        ssize_t n = op(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

static ssize_t write_op(int fd, void *data, size_t len) { return write(fd, data, len); }
static int write_all(int fd, const void *data, size_t len) { return transfer_all(write_op, fd, (void *)data, len); }
static int read_all(int fd, void *data, size_t len) { return transfer_all(read, fd, data, len); }

static void reply(int conn, const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n > 0)
        write_all(conn, line, (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

/* a failure: "E errno step message" (see the top of this file), on one line */
static void reply_error(int conn, int code, const char *step, const char *fmt, ...) {
    char message[384];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(message, sizeof(message), fmt, ap);
    va_end(ap);
    message[strcspn(message, "\n")] = '\0';
    reply(conn, "E %d %s %s\n", code, step, message);
}

/* what a process's own error code means (the replies of stdin, signal, events) */
static const char *process_error(int code) {
    return code == ESRCH    ? "no such process"
           : code == ECHILD ? "the process has ended"
           : code == EBADF  ? "the process was started without stdin"
                            : "the process is not reading its stdin (its pipe stayed full)";
}

/* SIGKILL every process of session `sid`, again and again until a scan finds none: a fork bomb
 * keeps forking while it is being killed. Killed members stay in the pids cgroup as zombies until
 * PID 1 reaps them, so the scan also waits (briefly) for those: the next command then finds room.
 * Uses no fork itself, so it works when the sandbox's process limit is used up. */
static void kill_session(pid_t sid) {
    for (int round = 0; round < KILL_ROUNDS; round++) {
        int live = 0, zombies = 0;
        /* the command's process group first, which a bomb's members keep unless they leave it:
         * one call reaches all of them at once, where the scan below takes a syscall per process
         * (slow enough under gVisor for a bomb to refill the limit while it runs) */
        kill(-sid, SIGKILL);
        DIR *proc = opendir("/proc");
        if (proc == NULL)
            return;
        struct dirent *entry;
        while ((entry = readdir(proc)) != NULL) {
            if (entry->d_name[0] < '0' || entry->d_name[0] > '9')
                continue;
            char path[300], stat[512];
            snprintf(path, sizeof(path), "/proc/%s/stat", entry->d_name);
            int fd = open(path, O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                continue;
            ssize_t n = read(fd, stat, sizeof(stat) - 1);
            close(fd);
            if (n <= 0)
                continue;
            stat[n] = '\0';
            char *end = strrchr(stat, ')'); /* comm may contain anything, even ") " */
            int ppid, pgrp, session;
            char state;
            if (end == NULL || sscanf(end + 2, "%c %d %d %d", &state, &ppid, &pgrp, &session) != 4)
                continue;
            if (session != sid)
                continue;
            if (state == 'Z') {
                zombies |= atoi(entry->d_name) != sid; /* the leader is ours to reap, after this */
            } else {
                kill(atoi(entry->d_name), SIGKILL);
                live = 1;
            }
        }
        closedir(proc);
        if (!live && !zombies)
            return;
        if (!live) /* only zombies left: give PID 1 a moment to reap them */
            usleep(1000);
    }
}

static int anonymous_file(void) {
    int fd = open(RUN_DIR, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL))
        return fd;
    /* gVisor's tmpfs has no O_TMPFILE: a named file, unlinked at once */
    char name[] = RUN_DIR "/spool.XXXXXX";
    fd = mkostemp(name, O_CLOEXEC);
    if (fd >= 0)
        unlink(name);
    return fd;
}

/* the spooled output, at most `cap` bytes of it */
static size_t spooled(int fd, size_t cap) {
    struct stat st;
    if (fstat(fd, &st) < 0)
        return 0;
    return (size_t)st.st_size < cap ? (size_t)st.st_size : cap;
}

/* In a gVisor sandbox output goes out in chunks of `pace` bytes, each acknowledged by one byte
 * from Atoll before the next: runsc's port forwarding (20240729) reads the sandbox's side into a
 * 16 KiB buffer and panics, ending the whole sandbox, when more than that is waiting. 0: unpaced. */
static size_t pace;
static int await_ack(int conn);

/* A command's output, paced as process events are (see the comment above `out_write`): each
 * chunk starts with "+", and fillers may come while its "A" is awaited. */
static void send_file(int conn, int fd, size_t len) {
    char buf[65536];
    size_t chunk = pace ? pace : sizeof(buf);
    off_t off = 0;
    while (len > 0) {
        ssize_t n = pread(fd, buf, len < chunk ? len : chunk, off);
        if (n <= 0) { /* shrank meanwhile (truncated by a background process): pad */
            memset(buf, 0, sizeof(buf));
            n = (ssize_t)(len < chunk ? len : chunk);
        }
        if (pace && write_all(conn, "+", 1) < 0)
            return;
        if (write_all(conn, buf, (size_t)n) < 0)
            return;
        if (pace && await_ack(conn) < 0) /* (a late "K" is not an "A": skipped) */
            return;
        off += n;
        len -= (size_t)n;
    }
}

/* Commands are children of this process (started by handler threads); the main loop reaps every
 * child and hands a command's status to the thread waiting for it through that thread's pipe. The
 * table lock is held from spawning a command to recording it, so its status cannot be reaped
 * before anyone waits for it. */
#define MAX_RUNNING 4096
static pthread_mutex_t table_lock = PTHREAD_MUTEX_INITIALIZER;
static struct {
    pid_t pid;
    int notify;
} running[MAX_RUNNING];

/* the main loop: a child ended; 1 when it was a command (its status went to its handler) */
static int hand_over(pid_t pid, int status) {
    for (int i = 0; i < MAX_RUNNING; i++) {
        if (running[i].pid == pid) {
            write_all(running[i].notify, &status, sizeof(status));
            running[i].pid = 0;
            return 1;
        }
    }
    return 0;
}

/* `argv0` as execvp would find it, along PATH from the command's own environment */
static int resolve(const char *argv0, char **env, char *path, size_t size) {
    if (strchr(argv0, '/') != NULL) {
        snprintf(path, size, "%s", argv0);
        return 0;
    }
    const char *search = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for (char **kv = env; *kv != NULL; kv++)
        if (strncmp(*kv, "PATH=", 5) == 0)
            search = *kv + 5;
    int found_errno = ENOENT;
    for (const char *dir = search;; dir = strchr(dir, ':') + 1) {
        size_t len = strcspn(dir, ":");
        snprintf(path, size, "%.*s%s%s", (int)len, dir, len ? "/" : "", argv0);
        struct stat st;
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            if (access(path, X_OK) == 0)
                return 0;
            found_errno = EACCES;
        }
        if (dir[len] == '\0')
            return found_errno;
    }
}

/* 0 when `cwd` is a directory, else why not (stat's errno, or ENOTDIR); `st` is read only
 * after a stat that succeeded */
static int directory_error(const char *cwd) {
    struct stat st;
    if (stat(cwd, &st) < 0)
        return errno;
    return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
}

/* the agent's environment with the request's KEY=VALUE overrides applied */
static char **merged_environment(char **overrides) {
    size_t n = 0, extra = 0;
    while (environ[n] != NULL)
        n++;
    while (overrides[extra] != NULL)
        extra++;
    char **env = calloc(n + extra + 1, sizeof(char *));
    if (env == NULL)
        return NULL;
    size_t k = 0;
    for (size_t i = 0; i < n; i++) {
        size_t key = strcspn(environ[i], "=");
        int replaced = 0;
        for (size_t j = 0; j < extra && !replaced; j++)
            replaced = strncmp(overrides[j], environ[i], key + 1) == 0;
        if (!replaced)
            env[k++] = environ[i];
    }
    for (size_t j = 0; j < extra; j++)
        env[k++] = overrides[j];
    return env;
}

/* Start the command as the leader of a new session, stdin /dev/null, output to the spools, with
 * default signal handling. posix_spawn shares this process's memory until the exec (vfork), so
 * a command costs the sandbox one new address space, not two: under gVisor that is most of the
 * cost of a command. Returns 0 or an errno; `notify` then reports its status. */
static int spawn(pid_t *pid, const char *cwd, const char *path, char **argv, char **env, int in, int out,
                 int err, int notify) {
    posix_spawn_file_actions_t actions;
    posix_spawnattr_t attr;
    sigset_t all, none;
    sigfillset(&all);
    sigemptyset(&none);
    posix_spawn_file_actions_init(&actions);
    if (in >= 0)
        posix_spawn_file_actions_adddup2(&actions, in, 0);
    else
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, out, 1);
    posix_spawn_file_actions_adddup2(&actions, err, 2);
    posix_spawn_file_actions_addchdir_np(&actions, cwd);
    posix_spawnattr_init(&attr);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSIGMASK);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setsigmask(&attr, &none);
    pthread_mutex_lock(&table_lock);
    int slot = -1;
    for (int i = 0; i < MAX_RUNNING && slot < 0; i++)
        if (running[i].pid == 0)
            slot = i;
    int rc = slot < 0 ? EAGAIN : posix_spawn(pid, path, &actions, &attr, argv, env);
    if (rc == 0) {
        running[slot].pid = *pid;
        running[slot].notify = notify;
    }
    pthread_mutex_unlock(&table_lock);
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    return rc;
}

/* ---- background processes ("ATL2" requests) --------------------------------------------------
 * "start" runs a command like an ATL1 request but answers at once: the agent keeps the process in
 * a bounded table, and a pump thread per process reads its stdout and stderr (pipes) into a ring
 * of events (seq, type, data) that lives here, inside the sandbox. So the ring survives a
 * checkpoint with the process, costs Atoll nothing, and a slow reader only holds up its own
 * connection: the ring drops its oldest events meanwhile (the reader is told, "T"). Requests:
 * "ATL2" u32le(length) then NUL-terminated fields, the first naming the operation:
 *   start  cwd ring_bytes flags timeout_s meta argc argv... KEY=VALUE...  -> "R pid"
 *          flags: 1 its stdin is a pipe (else /dev/null), 2 hold: the ring never drops what a
 *          reader has not read yet; the process waits instead (a foreground command, whose
 *          caller wants all of its output, as through a pipe), 4 follow: its events follow on
 *          this connection, as an "events pid 0" request would send them
 *   events pid since [follow(1|0)]  -> "R", then "T" (events were dropped), "V seq o|e len" +
 *                             len bytes, ..., "X seq code" last; follows the process live until
 *                             it ends (with follow 0: ends once it has sent what is kept)
 *   stdin  pid eof(0|1) DATA (the rest of the payload, raw)  -> "R"
 *   signal pid signo       -> "R" (SIGKILL: the whole session, as a timeout kill)
 *   list                   -> "P pid running code started_ms ended_ms metalen" + meta, ..., "."
 * Errors ("E errno step ..."): ESRCH (no such pid), EBADF (no stdin), ECHILD (ended), EBUSY
 * (table full), ETIMEDOUT (stdin not read), else as for a command.
 * With `pace`, every `pace` bytes of reply wait for one "A" from Atoll, counted over the whole
 * connection (so a paced reader acknowledges at fixed offsets, whatever the framing). Each paced
 * chunk starts with "+" (counted), and while it waits for its "A" the agent sends a "." now and
 * then (not counted; at most MAX_FILLS a chunk), which the reader skips before the next "+".
 * Why: runsc's port forwarding (20240729) can miss that the agent's last bytes arrived (a lost
 * wake-up in its read of the sandbox's side, seen under load: the agent blocked reading its "A",
 * both forwarding goroutines idle in Read, nothing queued on the host), and then nothing moves
 * until more bytes come: a filler is that byte. Unpaced output (the reply() lines, which end
 * their connection) has neither. */
#define MAX_PROCS 128 /* tracked: running and recently ended */
#define MAX_PROCS_RUNNING 64
#define MAX_META 16384
#define MIN_RING (256u << 10)
#define MAX_RING (64u << 20)
#define CHUNK 65536
#define PIPE_BYTES (1 << 20) /* a background process's stdout pipe (the default is 64 KiB) */
#define REC_HEADER 16 /* u64 seq, u32 len, u8 type, padding */
#define DRAIN_READS 16
#define MAX_HOLDERS 8 /* readers whose cursor a "hold" process waits for */

struct proc {
    int used, running, exit_code, readers; /* readers: streams holding a cursor into the ring */
    int hold, ever_read;                   /* flag 2 of start: wait for readers, never drop */
    int64_t hold_until_ms;                 /* (monotonic) its timeout: a hold ends there */
    uint64_t *cursors[MAX_HOLDERS];        /* where those readers are (NULL: no reader there) */
    pid_t pid;                             /* 0 while starting */
    int stdin_fd;                          /* our end of its stdin, -1 without or after eof */
    uint64_t serial;                       /* start order: the oldest ended slot is reused first */
    int64_t started_ms, ended_ms;
    char *meta;
    size_t meta_len;
    char *ring;
    size_t ring_size;
    uint64_t head, tail;          /* logical offsets of the oldest record and of the end */
    uint64_t first_seq, next_seq; /* the seq of the record at head, and of the next one */
    uint64_t last;                /* offset of the newest record (valid while tail > head) */
    uint64_t read_end;            /* how far any reader has ever read (records are read whole) */
};
static struct proc procs[MAX_PROCS];
static pthread_mutex_t proc_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t proc_changed = PTHREAD_COND_INITIALIZER;
static uint64_t proc_serial;

static int64_t now_ms(clockid_t clock) {
    struct timespec ts;
    clock_gettime(clock, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void ring_copy(struct proc *p, uint64_t off, void *data, size_t len, int to_ring) {
    size_t at = (size_t)(off % p->ring_size), first = len < p->ring_size - at ? len : p->ring_size - at;
    char *d = data;
    if (to_ring) {
        memcpy(p->ring + at, d, first);
        memcpy(p->ring, d + first, len - first);
    } else {
        memcpy(d, p->ring + at, first);
        memcpy(d + first, p->ring, len - first);
    }
}

static uint32_t record_len(struct proc *p, uint64_t off) {
    unsigned char h[REC_HEADER];
    uint32_t len;
    ring_copy(p, off, h, REC_HEADER, 0);
    memcpy(&len, h + 8, 4);
    return len;
}

/* with proc_lock held: one event, dropping the oldest ones to make room */
static int unread_at_head(struct proc *p) {
    for (int i = 0; i < MAX_HOLDERS; i++)
        if (p->cursors[i] != NULL && *p->cursors[i] <= p->head)
            return 1;
    return 0;
}

/* with proc_lock held: whether output of `type` and `len` bytes may extend the newest record
 * instead of making a new one: a reader is streaming, none has read that record yet (nor ever
 * will have read part of it: readers take whole records, under this lock), it is of the same
 * type, and stays within CHUNK. So a reader that keeps up gets every pipe read as its own event
 * at once, and one that lags behind a fast writer gets fewer, bigger events: per-event costs do
 * not cap the throughput. (Unwatched output keeps one event per pipe read, as before.) */
static int extends_last(struct proc *p, char type, uint32_t len) {
    if (p->readers == 0 || p->tail == p->head || p->read_end > p->last || type == 'x')
        return 0;
    unsigned char h[REC_HEADER];
    uint32_t have;
    ring_copy(p, p->last, h, REC_HEADER, 0);
    memcpy(&have, h + 8, 4);
    return h[12] == (unsigned char)type && (size_t)have + len <= CHUNK;
}

static void append(struct proc *p, char type, const void *data, uint32_t len) {
    size_t need = REC_HEADER + (size_t)len; /* len <= CHUNK < MIN_RING */
    int merge = 0;
    /* (re-decided after every wait: a reader may have read the newest record meanwhile; a
     * merged record stays <= CHUNK, so room never requires dropping that record itself) */
    while (need = (merge = extends_last(p, type, len)) ? len : REC_HEADER + (size_t)len,
           p->tail - p->head + need > p->ring_size) {
        /* the reader's turn (it broadcasts as it reads), or the first reader's, still to come */
        if (p->hold && (unread_at_head(p) || !p->ever_read)) {
            if (p->hold_until_ms >= 0 && now_ms(CLOCK_MONOTONIC) >= p->hold_until_ms) {
                p->hold = 0; /* its time is up: the pump kills it once this returns */
                continue;
            }
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += 200 * 1000000L;
            until.tv_sec += until.tv_nsec / 1000000000L;
            until.tv_nsec %= 1000000000L;
            pthread_cond_timedwait(&proc_changed, &proc_lock, &until);
            continue;
        }
        p->head += REC_HEADER + record_len(p, p->head);
        p->first_seq++;
    }
    if (merge) {
        uint32_t total = record_len(p, p->last) + len;
        ring_copy(p, p->last + 8, &total, 4, 1);
        ring_copy(p, p->tail, (void *)data, len, 1);
        p->tail += len;
        pthread_cond_broadcast(&proc_changed);
        return;
    }
    unsigned char h[REC_HEADER] = {0};
    uint64_t seq = p->next_seq++;
    memcpy(h, &seq, 8);
    memcpy(h + 8, &len, 4);
    h[12] = (unsigned char)type;
    p->last = p->tail;
    ring_copy(p, p->tail, h, REC_HEADER, 1);
    ring_copy(p, p->tail + REC_HEADER, (void *)data, len, 1);
    p->tail += need;
    pthread_cond_broadcast(&proc_changed);
}

static void release(struct proc *p) {
    if (p->ring != NULL)
        munmap(p->ring, p->ring_size);
    free(p->meta);
    memset(p, 0, sizeof(*p));
    p->stdin_fd = -1;
}

/* with proc_lock held: the process `pid`, running or ended, else NULL (the latest started, should
 * the sandbox's kernel have reused the pid of an ended one) */
static struct proc *find_proc(pid_t pid) {
    struct proc *found = NULL;
    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i].used && procs[i].pid == pid && pid > 0 && (found == NULL || procs[i].serial > found->serial))
            found = &procs[i];
    return found;
}

/* all of `len` bytes to a process's stdin, unless it stops reading for STDIN_WAIT_MS; 0, or
 * ECHILD (it has ended) or ETIMEDOUT (it does not read) */
#define STDIN_WAIT_MS 10000
static int feed_stdin(int fd, const char *data, size_t len) {
    fcntl(fd, F_SETFL, O_NONBLOCK);
    while (len > 0) {
        ssize_t n = write(fd, data, len);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno != EAGAIN)
            return ECHILD;
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        if (poll(&p, 1, STDIN_WAIT_MS) == 0)
            return ETIMEDOUT;
    }
    return 0;
}

/* Connection output, paced as the comment above says. */
struct out {
    int conn;
    size_t unacked;
};

#define FILL_FIRST_MS 100 /* the first filler after this long without the "A" */
#define FILL_MAX_MS 2000  /* then after twice as long each time, up to this */
#define MAX_FILLS 1024    /* a chunk's fillers: with it, at most pace + 1 KiB wait (< 16 KiB) */

/* the "A" of a chunk, sending fillers while it does not come (see the comment above) */
static int await_ack(int conn) {
    int fills = 0, wait_ms = FILL_FIRST_MS;
    for (;;) {
        struct pollfd p = {.fd = conn, .events = POLLIN};
        int ready = poll(&p, 1, fills < MAX_FILLS ? wait_ms : -1);
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready == 0) {
            if (write_all(conn, ".", 1) < 0)
                return -1;
            fills++;
            wait_ms = wait_ms * 2 > FILL_MAX_MS ? FILL_MAX_MS : wait_ms * 2;
            continue;
        }
        char ack = 0;
        ssize_t n = read(conn, &ack, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n != 1)
            return -1;
        if (ack == 'A')
            return 0;
    }
}

static int out_write(struct out *o, const void *data, size_t len) {
    const char *p = data;
    while (len > 0) {
        if (pace && o->unacked == 0) { /* a chunk's mark (see the comment above) */
            if (write_all(o->conn, "+", 1) < 0)
                return -1;
            o->unacked = 1;
        }
        size_t n = pace && len > pace - o->unacked ? pace - o->unacked : len;
        if (write_all(o->conn, p, n) < 0)
            return -1;
        p += n;
        len -= n;
        o->unacked += n;
        if (pace && o->unacked == pace) {
            if (await_ack(o->conn) < 0)
                return -1;
            o->unacked = 0;
        }
    }
    return 0;
}

struct pump_args {
    struct proc *p;
    pid_t pid;
    int out, err, notify[2];
    int64_t timeout_ms;
};

/* One event of what the pipe holds now (up to CHUNK: a fast writer's small writes make one
 * event, not many; nothing waits for more). -1 at EOF or error, after recording what came. The
 * pipes are non-blocking (the pump polls them); `rounds` events at most. */
static int drain(struct proc *p, int fd, char type, char *buf, int rounds) {
    for (int i = 0; i < rounds; i++) {
        size_t got = 0;
        int end = 0;
        while (got < CHUNK) {
            ssize_t n = read(fd, buf + got, CHUNK - got);
            if (n > 0) {
                got += (size_t)n;
                continue;
            }
            if (n < 0 && errno == EINTR)
                continue;
            end = n == 0 || errno != EAGAIN;
            break;
        }
        if (got > 0) {
            pthread_mutex_lock(&proc_lock);
            append(p, type, buf, (uint32_t)got);
            pthread_mutex_unlock(&proc_lock);
        }
        if (end)
            return -1;
        if (got < CHUNK)
            return 0;
    }
    return 0;
}

/* one background process: its output into the ring until it ends, then its exit event */
static void *pump(void *arg) {
    struct pump_args a = *(struct pump_args *)arg;
    free(arg);
    char *buf = malloc(CHUNK);
    int status = 0, timed_out = 0;
    int64_t deadline = a.timeout_ms > 0 ? now_ms(CLOCK_MONOTONIC) + a.timeout_ms : -1;
    for (;;) {
        struct pollfd pf[3] = {{.fd = a.notify[0], .events = POLLIN},
                               {.fd = buf ? a.out : -1, .events = POLLIN},
                               {.fd = buf ? a.err : -1, .events = POLLIN}};
        int64_t left = deadline < 0 ? -1 : deadline - now_ms(CLOCK_MONOTONIC);
        int ready = poll(pf, 3, left < 0 ? -1 : (int)(left > 60000 ? 60000 : left));
        if (ready < 0)
            continue;
        if (ready == 0 && deadline >= 0 && now_ms(CLOCK_MONOTONIC) >= deadline) {
            kill_session(a.pid); /* its status follows through notify */
            deadline = -1;
            timed_out = 1;
            continue;
        }
        if (pf[1].revents && drain(a.p, a.out, 'o', buf, 1) < 0) {
            close(a.out);
            a.out = -1;
        }
        if (pf[2].revents && drain(a.p, a.err, 'e', buf, 1) < 0) {
            close(a.err);
            a.err = -1;
        }
        if (pf[0].revents) {
            read_all(a.notify[0], &status, sizeof(status));
            break;
        }
    }
    /* what it wrote before it ended (a child it left may hold the pipes: do not wait for EOF) */
    if (buf != NULL && a.out >= 0)
        drain(a.p, a.out, 'o', buf, DRAIN_READS);
    if (buf != NULL && a.err >= 0)
        drain(a.p, a.err, 'e', buf, DRAIN_READS);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    char note[96];
    int note_len = timed_out ? snprintf(note, sizeof(note), "\nprocess timed out after %llds and was killed\n",
                                        (long long)(a.timeout_ms / 1000)) : 0;
    pthread_mutex_lock(&proc_lock);
    if (timed_out) { /* as process/execute reports it */
        append(a.p, 'e', note, (uint32_t)note_len);
        code = 124;
    }
    append(a.p, 'x', &code, sizeof(code));
    a.p->running = 0;
    a.p->exit_code = code;
    a.p->ended_ms = now_ms(CLOCK_REALTIME);
    if (a.p->stdin_fd >= 0)
        close(a.p->stdin_fd);
    a.p->stdin_fd = -1;
    pthread_mutex_unlock(&proc_lock);
    int opened[] = {a.out, a.err, a.notify[0], a.notify[1]};
    for (size_t i = 0; i < sizeof(opened) / sizeof(opened[0]); i++)
        if (opened[i] >= 0)
            close(opened[i]);
    free(buf);
    return NULL;
}

/* with proc_lock held: a slot for a new process (the oldest ended one nobody reads if need be) */
static struct proc *take_slot(void) {
    int running = 0;
    struct proc *free_slot = NULL, *oldest = NULL;
    for (int i = 0; i < MAX_PROCS; i++) {
        struct proc *p = &procs[i];
        if (!p->used) {
            if (free_slot == NULL)
                free_slot = p;
        } else if (p->running) {
            running++;
        } else if (p->readers == 0 && (oldest == NULL || p->serial < oldest->serial)) {
            oldest = p;
        }
    }
    if (running >= MAX_PROCS_RUNNING || (free_slot == NULL && oldest == NULL))
        return NULL;
    struct proc *p = free_slot != NULL ? free_slot : oldest;
    release(p);
    p->used = p->running = 1;
    p->serial = ++proc_serial;
    return p;
}

static void send_events(struct out *o, pid_t pid, uint64_t since, int follow);

static void start_process(int conn, char **fields, size_t n) {
    /* op cwd ring_bytes stdin timeout_s meta argc argv... env... */
    if (n < 8)
        return;
    const char *cwd = fields[1], *meta = fields[5];
    size_t ring = strtoull(fields[2], NULL, 10), argc = strtoull(fields[6], NULL, 10);
    int flags = atoi(fields[3]), want_stdin = flags & 1;
    int64_t timeout_ms = (int64_t)strtoull(fields[4], NULL, 10) * 1000;
    if (argc == 0 || argc > n - 7 || strlen(meta) > MAX_META) {
        reply_error(conn, EINVAL, "request", "bad request");
        return;
    }
    ring = ring < MIN_RING ? MIN_RING : ring > MAX_RING ? MAX_RING : ring;
    char **argv = calloc(argc + 1, sizeof(char *));
    char **env = merged_environment(fields + 7 + argc);
    int in[2] = {-1, -1}, out[2] = {-1, -1}, err[2] = {-1, -1}, notify[2] = {-1, -1};
    struct proc *p = NULL;
    struct pump_args *args = malloc(sizeof(*args));
    char path[4096];
    if (argv == NULL || env == NULL || args == NULL) {
        reply_error(conn, ENOMEM, "fork", "fork: %s", strerror(ENOMEM));
        goto fail;
    }
    memcpy(argv, fields + 7, argc * sizeof(char *));
    int bad_cwd = directory_error(cwd);
    if (bad_cwd != 0) {
        reply_error(conn, bad_cwd, "cwd", "chdir %s: %s", cwd, strerror(bad_cwd));
        goto fail;
    }
    int rc = resolve(argv[0], env, path, sizeof(path));
    if (rc != 0) {
        reply_error(conn, rc, "exec", "exec %s: %s", argv[0], strerror(rc));
        goto fail;
    }
    if (pipe2(out, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0 || pipe2(notify, O_CLOEXEC) < 0 ||
        (want_stdin && pipe2(in, O_CLOEXEC) < 0)) {
        int code = errno;
        reply_error(conn, code, "fork", "pipe: %s", strerror(code));
        goto fail;
    }
    pthread_mutex_lock(&proc_lock);
    p = take_slot();
    pthread_mutex_unlock(&proc_lock);
    if (p == NULL) {
        reply_error(conn, EBUSY, "table", "busy: at most %d processes run at once", MAX_PROCS_RUNNING);
        goto fail;
    }
    p->ring = mmap(NULL, ring, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    p->meta = strdup(meta);
    if (p->ring == MAP_FAILED || p->meta == NULL) {
        if (p->ring == MAP_FAILED)
            p->ring = NULL;
        reply_error(conn, ENOMEM, "fork", "fork: %s", strerror(ENOMEM));
        goto fail;
    }
    p->ring_size = ring;
    p->hold = (flags & 2) != 0;
    p->hold_until_ms = timeout_ms > 0 ? now_ms(CLOCK_MONOTONIC) + timeout_ms : -1;
    p->meta_len = strlen(meta);
    p->first_seq = p->next_seq = 1;
    p->started_ms = now_ms(CLOCK_REALTIME);
    pid_t child = 0;
    rc = spawn(&child, cwd, path, argv, env, in[0], out[1], err[1], notify[1]);
    if (rc != 0) { /* no room for a process, or (an absolute path is not resolved) no program */
        int no_room = rc == EAGAIN || rc == ENOMEM;
        reply_error(conn, rc, no_room ? "fork" : "exec", "%s %s: %s", no_room ? "fork" : "exec", argv[0],
                    strerror(rc));
        goto fail;
    }
    close(out[1]);
    close(err[1]);
    fcntl(out[0], F_SETFL, O_NONBLOCK);
    fcntl(err[0], F_SETFL, O_NONBLOCK);
    /* room for a fast writer to run ahead of the pump (fewer wake-ups on a busy host): best effort,
     * the host's pipe-max-size or the user's pipe quota may refuse it */
    fcntl(out[0], F_SETPIPE_SZ, PIPE_BYTES);
    if (in[0] >= 0)
        close(in[0]);
    *args = (struct pump_args){.p = p, .pid = child, .out = out[0], .err = err[0], .timeout_ms = timeout_ms};
    args->notify[0] = notify[0];
    args->notify[1] = notify[1];
    pthread_mutex_lock(&proc_lock);
    p->pid = child;
    p->stdin_fd = in[1];
    pthread_mutex_unlock(&proc_lock);
    pthread_t thread;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 128 << 10);
    if (pthread_create(&thread, &attr, pump, args) != 0) {
        /* no thread to watch it: it must not run unwatched */
        kill_session(child);
        pump(args); /* records its exit (status arrives through notify) */
        reply_error(conn, EAGAIN, "fork", "thread: %s", strerror(EAGAIN));
    } else if (flags & 4) { /* and its events on this connection (one round trip, not two) */
        pthread_attr_destroy(&attr);
        free(env);
        free(argv);
        char line[32];
        struct out o = {.conn = conn};
        if (out_write(&o, line, (size_t)snprintf(line, sizeof(line), "R %d\n", (int)child)) == 0)
            send_events(&o, child, 0, 1);
        return;
    } else {
        reply(conn, "R %d\n", (int)child);
    }
    pthread_attr_destroy(&attr);
    free(env);
    free(argv);
    return;
fail:;
    int opened[] = {in[0], in[1], out[0], out[1], err[0], err[1], notify[0], notify[1]};
    for (size_t i = 0; i < sizeof(opened) / sizeof(opened[0]); i++)
        if (opened[i] >= 0)
            close(opened[i]);
    if (p != NULL) {
        pthread_mutex_lock(&proc_lock);
        release(p);
        pthread_mutex_unlock(&proc_lock);
    }
    free(args);
    free(env);
    free(argv);
}

/* the connection was closed by Atoll (it sends nothing unasked while we are idle) */
static int peer_gone(int conn) {
    struct pollfd p = {.fd = conn, .events = POLLIN};
    if (poll(&p, 1, 0) <= 0)
        return 0;
    char byte;
    return recv(conn, &byte, 1, MSG_DONTWAIT) <= 0;
}

/* the events of `pid` after `since` on `o`'s connection (its pacing count goes on) */
static void send_events(struct out *o, pid_t pid, uint64_t since, int follow) {
    int conn = o->conn;
    char *buf = malloc(2 * CHUNK + 256);
    if (buf == NULL)
        return;
    pthread_mutex_lock(&proc_lock);
    struct proc *p = find_proc(pid);
    if (p == NULL) {
        pthread_mutex_unlock(&proc_lock);
        reply_error(conn, ESRCH, "pid", "%s", process_error(ESRCH));
        free(buf);
        return;
    }
    p->readers++;
    uint64_t off = p->head, seq = p->first_seq;
    int truncated = since + 1 < p->first_seq;
    while (seq <= since && off < p->tail) {
        off += REC_HEADER + record_len(p, off);
        seq++;
    }
    int holder = -1; /* (the cursor is read by the pump, under proc_lock, while we are here) */
    for (int i = 0; i < MAX_HOLDERS && holder < 0; i++)
        if (p->cursors[i] == NULL)
            p->cursors[holder = i] = &off;
    p->ever_read = 1;
    pthread_mutex_unlock(&proc_lock);
    int done = out_write(o, "R\n", 2) < 0;
    while (!done) {
        size_t used = 0;
        if (truncated) {
            memcpy(buf, "T\n", 2);
            used = 2;
            truncated = 0;
        }
        pthread_mutex_lock(&proc_lock);
        while (off == p->tail && p->running && follow && !done) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until); /* wake now and then to see a closed peer */
            until.tv_nsec += 200 * 1000000L;
            until.tv_sec += until.tv_nsec / 1000000000L;
            until.tv_nsec %= 1000000000L;
            if (pthread_cond_timedwait(&proc_changed, &proc_lock, &until) == ETIMEDOUT) {
                pthread_mutex_unlock(&proc_lock);
                done = peer_gone(conn);
                pthread_mutex_lock(&proc_lock);
            }
        }
        if (off < p->head) { /* the ring went past this reader while it was slow */
            off = p->head;
            seq = p->first_seq;
            memcpy(buf + used, "T\n", 2);
            used += 2;
        }
        if (off == p->tail) /* (ended: its exit event was already sent) */
            done = 1;
        /* whole records, up to about CHUNK bytes of them (at least one) */
        while (!done && off < p->tail && used < CHUNK) {
            unsigned char h[REC_HEADER];
            uint32_t len;
            ring_copy(p, off, h, REC_HEADER, 0);
            memcpy(&len, h + 8, 4);
            memcpy(&seq, h, 8);
            if (h[12] == 'x') {
                int code = 0;
                ring_copy(p, off + REC_HEADER, &code, sizeof(code), 0);
                used += (size_t)snprintf(buf + used, 64, "X %llu %d\n", (unsigned long long)seq, code);
                done = 1;
            } else {
                used += (size_t)snprintf(buf + used, 64, "V %llu %c %u\n", (unsigned long long)seq, h[12], len);
                ring_copy(p, off + REC_HEADER, buf + used, len, 0);
                used += len;
            }
            off += REC_HEADER + len;
        }
        if (off > p->read_end) /* what was read is sealed: appends make new records after it */
            p->read_end = off;
        if (p->hold) /* a writer waiting for room may go on */
            pthread_cond_broadcast(&proc_changed);
        pthread_mutex_unlock(&proc_lock);
        if (used > 0 && out_write(o, buf, used) < 0)
            done = 1;
    }
    pthread_mutex_lock(&proc_lock);
    p->readers--;
    if (holder >= 0)
        p->cursors[holder] = NULL;
    pthread_cond_broadcast(&proc_changed); /* a held writer may go on */
    pthread_mutex_unlock(&proc_lock);
    free(buf);
}

static void stream_events(int conn, char **fields, size_t n) {
    if (n < 3)
        return;
    struct out o = {.conn = conn};
    send_events(&o, (pid_t)atoi(fields[1]), strtoull(fields[2], NULL, 10), n < 4 || fields[3][0] != '0');
}

static void send_stdin(int conn, const char *payload, size_t len) {
    /* op pid eof DATA */
    const char *pid_s = memchr(payload, '\0', len);
    const char *eof_s = pid_s ? memchr(pid_s + 1, '\0', len - (size_t)(pid_s + 1 - payload)) : NULL;
    const char *data = eof_s ? memchr(eof_s + 1, '\0', len - (size_t)(eof_s + 1 - payload)) : NULL;
    if (data == NULL)
        return;
    pid_t pid = (pid_t)atoi(pid_s + 1);
    int eof = eof_s[1] == '1';
    data++;
    size_t data_len = len - (size_t)(data - payload);
    pthread_mutex_lock(&proc_lock);
    struct proc *p = find_proc(pid);
    int fd = p != NULL && p->stdin_fd >= 0 ? dup(p->stdin_fd) : -1;
    int error = p == NULL ? ESRCH : !p->running ? ECHILD : fd < 0 ? EBADF : 0;
    pthread_mutex_unlock(&proc_lock);
    if (error == 0 && data_len > 0)
        error = feed_stdin(fd, data, data_len);
    if (fd >= 0)
        close(fd);
    if (error == 0 && eof) {
        pthread_mutex_lock(&proc_lock);
        if (p->pid == pid && p->stdin_fd >= 0) {
            close(p->stdin_fd);
            p->stdin_fd = -1;
        }
        pthread_mutex_unlock(&proc_lock);
    }
    if (error != 0)
        reply_error(conn, error, "stdin", "%s", process_error(error));
    else
        reply(conn, "R\n");
}

static void send_signal(int conn, char **fields, size_t n) {
    if (n < 3)
        return;
    pid_t pid = (pid_t)atoi(fields[1]);
    int sig = atoi(fields[2]);
    pthread_mutex_lock(&proc_lock);
    struct proc *p = find_proc(pid);
    int error = p == NULL ? ESRCH : !p->running ? ECHILD : 0;
    pthread_mutex_unlock(&proc_lock);
    if (error != 0) {
        reply_error(conn, error, "pid", "%s", process_error(error));
        return;
    }
    if (sig == SIGKILL)
        kill_session(pid);
    else if (sig > 0 && sig < 65)
        kill(-pid, sig);
    reply(conn, "R\n");
}

static void list_processes(int conn) {
    size_t cap = 4096, used = 0;
    char *buf = malloc(cap);
    pthread_mutex_lock(&proc_lock);
    for (int i = 0; i < MAX_PROCS && buf != NULL; i++) {
        struct proc *p = &procs[i];
        if (!p->used || p->pid <= 0)
            continue;
        if (used + p->meta_len + 128 > cap) {
            size_t bigger = (used + p->meta_len + 128) * 2;
            char *grown = realloc(buf, bigger);
            if (grown == NULL)
                break;
            buf = grown;
            cap = bigger;
        }
        used += (size_t)snprintf(buf + used, 128, "P %d %d %d %lld %lld %zu\n", (int)p->pid, p->running,
                                 p->exit_code, (long long)p->started_ms, (long long)p->ended_ms, p->meta_len);
        memcpy(buf + used, p->meta, p->meta_len);
        used += p->meta_len;
    }
    pthread_mutex_unlock(&proc_lock);
    if (buf == NULL)
        return;
    struct out o = {.conn = conn};
    if (out_write(&o, buf, used) == 0)
        out_write(&o, ".\n", 2);
    free(buf);
}

/* one ATL2 request (see above) */
static void handle_v2(int conn, char *payload, uint32_t len) {
    if (strcmp(payload, "stdin") == 0) {
        send_stdin(conn, payload, len);
        return;
    }
    size_t count = 0;
    for (uint32_t i = 0; i < len; i++)
        count += payload[i] == '\0';
    char **fields = calloc(count + 2, sizeof(char *));
    if (fields == NULL)
        return;
    size_t n = 0;
    for (char *p = payload; p < payload + len && n < count; p += strlen(p) + 1)
        fields[n++] = p;
    if (n == 0)
        ;
    else if (strcmp(fields[0], "start") == 0)
        start_process(conn, fields, n);
    else if (strcmp(fields[0], "events") == 0)
        stream_events(conn, fields, n);
    else if (strcmp(fields[0], "signal") == 0)
        send_signal(conn, fields, n);
    else if (strcmp(fields[0], "list") == 0)
        list_processes(conn);
    free(fields);
}

/* one connection: parse the request, run the command, report */
static void handle(int conn) {
    char header[8];
    if (read_all(conn, header, sizeof(header)) < 0 ||
        (memcmp(header, "ATL1", 4) != 0 && memcmp(header, "ATL2", 4) != 0))
        return;
    uint32_t len = (uint32_t)(unsigned char)header[4] | (uint32_t)(unsigned char)header[5] << 8 |
                   (uint32_t)(unsigned char)header[6] << 16 | (uint32_t)(unsigned char)header[7] << 24;
    if (len == 0 || len > MAX_REQUEST)
        return;
    char *payload = malloc(len + 1);
    if (payload == NULL || read_all(conn, payload, len) < 0) {
        free(payload);
        return;
    }
    payload[len] = '\0';
    if (header[3] == '2') {
        handle_v2(conn, payload, len);
        free(payload);
        return;
    }
    /* split into strings */
    size_t count = 0;
    for (uint32_t i = 0; i < len; i++)
        count += payload[i] == '\0';
    char **fields = calloc(count + 2, sizeof(char *));
    char **argv = NULL, **env = NULL;
    int out = -1, err = -1, notify[2] = {-1, -1};
    if (fields == NULL || count < 3)
        goto done;
    size_t n = 0;
    for (char *p = payload; p < payload + len && n < count; p += strlen(p) + 1)
        fields[n++] = p;
    const char *cwd = fields[0];
    size_t cap = strtoull(fields[1], NULL, 10);
    size_t argc = strtoull(fields[2], NULL, 10);
    if (argc == 0 || 3 + argc > n)
        goto done;
    argv = calloc(argc + 1, sizeof(char *));
    if (argv == NULL)
        goto done;
    memcpy(argv, fields + 3, argc * sizeof(char *));
    env = merged_environment(fields + 3 + argc); /* NULL-terminated by calloc */
    if (env == NULL)
        goto done;

    int bad_cwd = directory_error(cwd);
    if (bad_cwd != 0) {
        reply_error(conn, bad_cwd, "cwd", "chdir %s: %s", cwd, strerror(bad_cwd));
        goto done;
    }
    out = anonymous_file();
    err = anonymous_file();
    if (out < 0 || err < 0 || pipe2(notify, O_CLOEXEC) < 0) {
        int code = errno;
        reply_error(conn, code, "spool", "spool: %s", strerror(code));
        goto done;
    }
    char path[4096];
    int rc = resolve(argv[0], env, path, sizeof(path));
    pid_t child = 0;
    if (rc == 0)
        rc = spawn(&child, cwd, path, argv, env, -1, out, err, notify[1]);
    int code, status = 0;
    if (rc == EAGAIN || rc == ENOMEM) {
        reply_error(conn, rc, "fork", "fork: %s", strerror(rc));
        goto done;
    }
    if (rc != 0) { /* as a shell reports a command it cannot run */
        reply(conn, "R 0\n");
        dprintf(err, "%s: %s\n", argv[0], strerror(rc));
        code = rc == ENOENT ? 127 : 126;
    } else {
        reply(conn, "R %d\n", (int)child);
        /* wait for the command, or for Atoll to ask for (or, by leaving, imply) a kill */
        int killed = 0;
        for (;;) {
            struct pollfd p[2] = {{.fd = notify[0], .events = POLLIN}, {.fd = conn, .events = POLLIN}};
            if (poll(p, killed ? 1 : 2, -1) < 0)
                continue;
            if (p[0].revents) {
                read_all(notify[0], &status, sizeof(status));
                break;
            }
            if (p[1].revents) {
                char byte;
                ssize_t got = read(conn, &byte, 1);
                kill_session(child);
                killed = 1;
                if (got <= 0) { /* Atoll is gone: nobody will collect the result */
                    read_all(notify[0], &status, sizeof(status));
                    goto done;
                }
            }
        }
        code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    size_t out_len = spooled(out, cap), err_len = spooled(err, cap);
    /* "+": the output's chunks carry marks (send_file); Atoll reads an agent's without them too */
    reply(conn, pace ? "X %d %zu %zu +\n" : "X %d %zu %zu\n", code, out_len, err_len);
    send_file(conn, out, out_len);
    send_file(conn, err, err_len);
done:;
    int opened[] = {out, err, notify[0], notify[1]};
    for (size_t i = 0; i < sizeof(opened) / sizeof(opened[0]); i++)
        if (opened[i] >= 0)
            close(opened[i]);
    free(env);
    free(argv);
    free(fields);
    free(payload);
}

static void *handler_thread(void *arg) {
    int conn = (int)(intptr_t)arg;
    handle(conn);
    close(conn);
    return NULL;
}

static int listen_loopback(int port) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(fd, 256) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int listen_socket(void) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, SOCKET_PATH, sizeof(addr.sun_path) - 1);
    unlink(SOCKET_PATH);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || chmod(SOCKET_PATH, 0600) < 0 ||
        listen(fd, 256) < 0) {
        close(fd);
        return -1;
    }
    return fd;
}

int main(int argc, char **argv) {
    char **main_command = NULL;
    int tcp_port = 0;
    if (argc > 2 && strcmp(argv[1], "--tcp") == 0) {
        tcp_port = atoi(argv[2]);
        pace = 8192;
        argv += 2;
        argc -= 2;
    }
    if (argc > 2 && strcmp(argv[1], "--") == 0)
        main_command = argv + 2;

    /* Code in the sandbox (same uid, no CAP_SYS_PTRACE) must neither ptrace PID 1 (a stopped
       agent would stall every exec) nor read its memory or open its fds through /proc/1.
       In a user namespace the agent is given CAP_SETPCAP, which nothing else in the sandbox
       has: dropped from the bounding set here, it stays in the agent's permitted set and no
       command it starts gets it at its execve. The kernel lets a process of the same uid trace
       (or read /proc/1's environ, mem, fds) only if its permitted capabilities include all of
       the target's, so that bars it while the agent stays dumpable, which CRIU needs: after a
       restore the agent's memory belongs to the host's user namespace, and CRIU, checking
       from inside the sandbox's, could not open a non-dumpable agent's namespaces (a restored
       sandbox could not be checkpointed again). Otherwise: not dumpable. Commands it starts
       are dumpable again from their execve. */
    if (!(prctl(PR_CAPBSET_READ, CAP_SETPCAP_NR, 0, 0, 0) == 1 &&
          prctl(PR_CAPBSET_DROP, CAP_SETPCAP_NR, 0, 0, 0) == 0) &&
        prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0)
        dprintf(2, "atoll-agent: PR_SET_DUMPABLE: %s\n", strerror(errno));

    /* signals reach us only inside ppoll, where the loop below handles them */
    sigset_t blocked, during_poll;
    sigemptyset(&blocked);
    sigaddset(&blocked, SIGCHLD);
    for (size_t i = 0; i < N_FORWARDED; i++)
        sigaddset(&blocked, forwarded[i]);
    sigprocmask(SIG_BLOCK, &blocked, &during_poll);
    catch(SIGCHLD);
    for (size_t i = 0; i < N_FORWARDED; i++)
        catch(forwarded[i]);
    signal(SIGPIPE, SIG_IGN);
    /* Job-control stops from inside: Linux ignores them for a pid namespace's init, gVisor's
       sentry does not (SIGSTOP itself it does deliver: the server's watchdog continues us). A
       no-op handler, not SIG_IGN, which commands would inherit through execve. */
    struct sigaction keep_running;
    memset(&keep_running, 0, sizeof(keep_running));
    keep_running.sa_handler = ignore_signal;
    keep_running.sa_flags = SA_RESTART;
    sigemptyset(&keep_running.sa_mask);
    for (int sig = SIGTSTP; sig <= SIGTTOU; sig++) /* SIGTSTP, SIGTTIN, SIGTTOU */
        sigaction(sig, &keep_running, NULL);
    umask(022);

    pid_t main_pid = -1;
    if (main_command != NULL) {
        main_pid = fork();
        if (main_pid == 0) {
            default_signals();
            execvp(main_command[0], main_command);
            dprintf(2, "atoll-agent: %s: %s\n", main_command[0], strerror(errno));
            _exit(errno == ENOENT ? 127 : 126);
        }
        if (main_pid < 0) {
            dprintf(2, "atoll-agent: fork: %s\n", strerror(errno));
            return 1;
        }
    }

    pthread_attr_t handler_attr;
    pthread_attr_init(&handler_attr);
    pthread_attr_setdetachstate(&handler_attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&handler_attr, 256 << 10);
    int listener = tcp_port > 0 ? listen_loopback(tcp_port) : listen_socket();
    if (listener < 0)
        dprintf(2, "atoll-agent: cannot listen: %s (no commands through the agent)\n", strerror(errno));
    for (;;) {
        int status;
        pid_t gone;
        pthread_mutex_lock(&table_lock);
        while ((gone = waitpid(-1, &status, WNOHANG)) > 0) {
            if (gone == main_pid)
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            hand_over(gone, status); /* or an orphan, reaped and done with */
        }
        pthread_mutex_unlock(&table_lock);
        for (size_t i = 0; i < N_FORWARDED; i++) {
            int sig = forwarded[i];
            if (!pending[sig])
                continue;
            pending[sig] = 0;
            if (main_pid > 0)
                kill(main_pid, sig);
        }
        struct pollfd p = {.fd = listener, .events = POLLIN};
        int ready = ppoll(&p, listener >= 0 ? 1 : 0, NULL, &during_poll);
        if (ready <= 0 || !(p.revents & POLLIN))
            continue;
        int conn = accept4(listener, NULL, NULL, SOCK_CLOEXEC);
        if (conn < 0)
            continue;
        if (tcp_port > 0) { /* paced replies are request/answer pairs: Nagle would stall each */
            int on = 1;
            setsockopt(conn, IPPROTO_TCP, TCP_NODELAY, &on, sizeof(on));
        }
        /* a thread per connection (it shares the signal mask above: every signal stays with
         * this loop); it waits for its command, so commands run concurrently */
        pthread_t handler;
        int rc = pthread_create(&handler, &handler_attr, handler_thread, (void *)(intptr_t)conn);
        if (rc != 0) {
            /* the process limit is used up (e.g. by a fork bomb): reported like any command
             * that could not start, which Atoll answers with "try again later" */
            reply_error(conn, rc, "fork", "fork: %s", strerror(rc));
            /* the request is unread: closing with it queued would reset the connection (a unix
             * socket's peer then reads ECONNRESET, not the reply), so take what has arrived */
            char discard[4096];
            while (recv(conn, discard, sizeof(discard), MSG_DONTWAIT) > 0)
                ;
            close(conn);
        }
    }
}

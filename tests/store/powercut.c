/* An LD_PRELOAD shim that keeps, beside each file the database uses, the file as it
 * would be after a power cut: its content as of its last successful fsync/fdatasync.
 *
 * Loaded into `relaybox serve` (and so into its writer process) by
 * tests/store/test_power_loss.py. Files whose path starts with $POWERCUT_PREFIX are
 * tracked (the -shm file is not: SQLite rebuilds it). For each:
 *
 * - when a process first opens it, and it has no shadow yet, its content then is taken
 *   as durable (the test syncs before the server starts; a file created now is empty);
 * - after every successful fsync or fdatasync of it, its whole content is copied to
 *   PATH.synced (a temporary file renamed over the old copy, so a kill never leaves a
 *   half copy), before the call returns: whatever a process learns was synced (an ack
 *   that follows the commit's fsync) is in the copy;
 * - writes, truncations and copies of one process are serialised by one lock, so a
 *   copy never holds a write that was not synced;
 * - unlinking it removes its copy too (the deletion is taken as durable).
 *
 * "Power cut" = stop the processes, then put every PATH.synced in place of PATH (and
 * drop the -shm file): every write not synced by then is gone, as the page cache is.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#define MAX_FDS 4096

static pthread_mutex_t lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
static char *tracked[MAX_FDS]; /* fd -> path of a tracked file */

static int (*real_open)(const char *, int, ...);
static int (*real_open64)(const char *, int, ...);
static int (*real_close)(int);
static ssize_t (*real_write)(int, const void *, size_t);
static ssize_t (*real_pwrite)(int, const void *, size_t, off_t);
static ssize_t (*real_pwrite64)(int, const void *, size_t, off_t);
static int (*real_ftruncate)(int, off_t);
static int (*real_ftruncate64)(int, off_t);
static int (*real_fsync)(int);
static int (*real_fdatasync)(int);
static int (*real_unlink)(const char *);

static pthread_once_t resolved = PTHREAD_ONCE_INIT;

static void resolve(void) {
    real_open = dlsym(RTLD_NEXT, "open");
    real_open64 = dlsym(RTLD_NEXT, "open64");
    real_close = dlsym(RTLD_NEXT, "close");
    real_write = dlsym(RTLD_NEXT, "write");
    real_pwrite = dlsym(RTLD_NEXT, "pwrite");
    real_pwrite64 = dlsym(RTLD_NEXT, "pwrite64");
    real_ftruncate = dlsym(RTLD_NEXT, "ftruncate");
    real_ftruncate64 = dlsym(RTLD_NEXT, "ftruncate64");
    real_fsync = dlsym(RTLD_NEXT, "fsync");
    real_fdatasync = dlsym(RTLD_NEXT, "fdatasync");
    real_unlink = dlsym(RTLD_NEXT, "unlink");
}

#define REAL(name) (pthread_once(&resolved, resolve), real_##name)

static int ends_with(const char *s, const char *tail) {
    size_t n = strlen(s), m = strlen(tail);
    return n >= m && strcmp(s + n - m, tail) == 0;
}

static int is_tracked_path(const char *path) {
    const char *prefix = getenv("POWERCUT_PREFIX");
    if (prefix == NULL || *prefix == '\0' || path == NULL)
        return 0;
    return strncmp(path, prefix, strlen(prefix)) == 0 && !ends_with(path, "-shm") &&
           !ends_with(path, ".synced") && !ends_with(path, ".synced.tmp");
}

/* Copy the whole of fd to PATH.synced (through a temporary file and a rename). */
static void keep_synced(int fd, const char *path) {
    char dst[4096], tmp[4096];
    snprintf(dst, sizeof dst, "%s.synced", path);
    snprintf(tmp, sizeof tmp, "%s.synced.tmp", path);
    int out = REAL(open)(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (out < 0) {
        perror("powercut: open copy");
        abort();
    }
    char buf[1 << 16];
    off_t off = 0;
    for (;;) {
        ssize_t n = pread(fd, buf, sizeof buf, off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            perror("powercut: read");
            abort();
        }
        if (n == 0)
            break;
        for (ssize_t done = 0; done < n;) {
            ssize_t w = REAL(write)(out, buf + done, (size_t)(n - done));
            if (w < 0 && errno == EINTR)
                continue;
            if (w < 0) {
                perror("powercut: write copy");
                abort();
            }
            done += w;
        }
        off += n;
    }
    REAL(close)(out);
    if (rename(tmp, dst) != 0) {
        perror("powercut: rename copy");
        abort();
    }
}

static void opened(int fd, const char *path) {
    if (fd < 0 || fd >= MAX_FDS || !is_tracked_path(path))
        return;
    pthread_mutex_lock(&lock);
    free(tracked[fd]);
    tracked[fd] = strdup(path);
    char dst[4096];
    snprintf(dst, sizeof dst, "%s.synced", path);
    if (access(dst, F_OK) != 0)
        keep_synced(fd, path); /* first open: what is there now is durable */
    pthread_mutex_unlock(&lock);
}

static int is_tracked_fd(int fd) { return fd >= 0 && fd < MAX_FDS && tracked[fd] != NULL; }

static int open_common(int (*fn)(const char *, int, ...), const char *path, int flags,
                       va_list ap) {
    mode_t mode = 0;
    if (flags & (O_CREAT | O_TMPFILE))
        mode = (mode_t)va_arg(ap, int);
    int fd = fn(path, flags, mode);
    opened(fd, path);
    return fd;
}

int open(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    int fd = open_common(REAL(open), path, flags, ap);
    va_end(ap);
    return fd;
}

int open64(const char *path, int flags, ...) {
    va_list ap;
    va_start(ap, flags);
    int fd = open_common(REAL(open64), path, flags, ap);
    va_end(ap);
    return fd;
}

int close(int fd) {
    if (is_tracked_fd(fd)) {
        pthread_mutex_lock(&lock);
        free(tracked[fd]);
        tracked[fd] = NULL;
        pthread_mutex_unlock(&lock);
    }
    return REAL(close)(fd);
}

#define LOCKED(call)                                                                     \
    do {                                                                                 \
        if (!is_tracked_fd(fd))                                                          \
            return call;                                                                 \
        pthread_mutex_lock(&lock);                                                       \
        __typeof__(call) r_ = call;                                                      \
        int e_ = errno;                                                                  \
        pthread_mutex_unlock(&lock);                                                     \
        errno = e_;                                                                      \
        return r_;                                                                       \
    } while (0)

ssize_t write(int fd, const void *buf, size_t n) { LOCKED(REAL(write)(fd, buf, n)); }
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) {
    LOCKED(REAL(pwrite)(fd, buf, n, off));
}
ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off) {
    LOCKED(REAL(pwrite64)(fd, buf, n, off));
}
int ftruncate(int fd, off_t len) { LOCKED(REAL(ftruncate)(fd, len)); }
int ftruncate64(int fd, off_t len) { LOCKED(REAL(ftruncate64)(fd, len)); }

static int synced(int (*fn)(int), int fd) {
    if (!is_tracked_fd(fd))
        return fn(fd);
    pthread_mutex_lock(&lock);
    int r = fn(fd);
    int e = errno;
    if (r == 0)
        keep_synced(fd, tracked[fd]);
    pthread_mutex_unlock(&lock);
    errno = e;
    return r;
}

int fsync(int fd) { return synced(REAL(fsync), fd); }
int fdatasync(int fd) { return synced(REAL(fdatasync), fd); }

int unlink(const char *path) {
    int r = REAL(unlink)(path);
    if (r == 0 && is_tracked_path(path)) {
        char dst[4096];
        snprintf(dst, sizeof dst, "%s.synced", path);
        REAL(unlink)(dst);
    }
    return r;
}

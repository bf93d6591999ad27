/*
 * Preloaded (LD_PRELOAD) into every Cyrus process the agent runs; two jobs, see mailshard/agent/cyruspreload.py.
 *
 * 1. Logs. Sends the process's syslog(3) lines to the unix datagram socket named by
 *    $MAILSHARD_SYSLOG_SOCKET instead of /dev/log. Cyrus logs only through syslog(3), and in a pod there is
 *    no /dev/log, nor can an unprivileged user create one (/dev is the runtime's root-owned tmpfs); the agent
 *    binds that socket and writes each line to its own log (mailshard/agent/daemonlog.py). Each line is
 *    "<PRI>ident[pid]: message", as the C library sends it minus the timestamp. Sending never blocks: a line
 *    the agent has no room for is dropped rather than stall a mail process. LOG_PERROR is ignored on
 *    purpose: a Cyrus service's stderr is its client's connection. Without the variable every call goes to
 *    the C library's syslog, unchanged.
 *
 * 2. Unique mailbox ids. Debian's Cyrus 3.6 is built without libuuid, so a new mailbox's unique id is 24
 *    characters of rand(), and Cyrus seeds rand() with time(NULL): two processes (an admin's imapd and an
 *    autocreating lmtpd, say) that create a mailbox in the same second give both the same id, and
 *    replication then refuses both users for good ("Mailbox exists with another name or uniqueid"). Every
 *    srand() here is mixed with fresh kernel randomness, and rand() is seeded so at start too.
 *
 * Built by the Cyrus image and by the mail tier: gcc -shared -fPIC -O2 -Wall -Werror -o <lib>.so <this file>
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <syslog.h>
#include <unistd.h>

#define SOCKET_VARIABLE "MAILSHARD_SYSLOG_SOCKET"
#define LINE_MAX_BYTES 8192

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static const char *log_ident;
static int log_option;
static int log_facility = LOG_USER;
static int log_mask = 0xff;
static int log_fd = -1;

/* The socket to send to, or NULL to leave everything to the C library. */
static const char *target(void)
{
    const char *path = getenv(SOCKET_VARIABLE);
    if (path == NULL || *path == '\0' || strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path)) {
        return NULL;
    }
    return path;
}

static void *next(const char *name)
{
    return dlsym(RTLD_NEXT, name);
}

static void send_line(const char *path, int priority, const char *format, va_list arguments)
{
    int saved_errno = errno; /* for %m, which glibc's printf expands */
    char line[LINE_MAX_BYTES];
    struct sockaddr_un address;
    int length;
    int body;

    if ((LOG_MASK(LOG_PRI(priority)) & log_mask) == 0) {
        return;
    }
    if ((priority & LOG_FACMASK) == 0) {
        priority |= log_facility;
    }
    length = snprintf(line, sizeof line, "<%d>%.200s", priority,
                      log_ident != NULL ? log_ident : program_invocation_short_name);
    if (log_option & LOG_PID) {
        length += snprintf(line + length, sizeof line - length, "[%d]", (int)getpid());
    }
    length += snprintf(line + length, sizeof line - length, ": ");
    errno = saved_errno;
    body = vsnprintf(line + length, sizeof line - length, format, arguments);
    if (body > 0) {
        length += body;
    }
    if (length >= (int)sizeof line) {
        length = sizeof line - 1;
    }
    memset(&address, 0, sizeof address);
    address.sun_family = AF_UNIX;
    strcpy(address.sun_path, path);

    pthread_mutex_lock(&lock);
    if (log_fd < 0) {
        log_fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    }
    if (log_fd >= 0) {
        sendto(log_fd, line, (size_t)length, MSG_DONTWAIT | MSG_NOSIGNAL, (struct sockaddr *)&address,
               sizeof address);
    }
    pthread_mutex_unlock(&lock);
    errno = saved_errno;
}

void openlog(const char *ident, int option, int facility)
{
    if (target() == NULL) {
        ((void (*)(const char *, int, int))next("openlog"))(ident, option, facility);
        return;
    }
    pthread_mutex_lock(&lock);
    log_ident = ident;
    log_option = option;
    if (facility != 0 && (facility & ~LOG_FACMASK) == 0) {
        log_facility = facility;
    }
    pthread_mutex_unlock(&lock);
}

void closelog(void)
{
    if (target() == NULL) {
        ((void (*)(void))next("closelog"))();
        return;
    }
    pthread_mutex_lock(&lock);
    if (log_fd >= 0) {
        close(log_fd);
        log_fd = -1;
    }
    log_ident = NULL;
    pthread_mutex_unlock(&lock);
}

int setlogmask(int mask)
{
    int previous;

    if (target() == NULL) {
        return ((int (*)(int))next("setlogmask"))(mask);
    }
    pthread_mutex_lock(&lock);
    previous = log_mask;
    if (mask != 0) {
        log_mask = mask;
    }
    pthread_mutex_unlock(&lock);
    return previous;
}

void vsyslog(int priority, const char *format, va_list arguments)
{
    const char *path = target();
    if (path == NULL) {
        ((void (*)(int, const char *, va_list))next("vsyslog"))(priority, format, arguments);
        return;
    }
    send_line(path, priority, format, arguments);
}

void syslog(int priority, const char *format, ...)
{
    va_list arguments;
    va_start(arguments, format);
    vsyslog(priority, format, arguments);
    va_end(arguments);
}

/* What callers built with _FORTIFY_SOURCE (Debian's packages) call instead of syslog and vsyslog. */
void __vsyslog_chk(int priority, int flag, const char *format, va_list arguments)
{
    const char *path = target();
    if (path == NULL) {
        ((void (*)(int, int, const char *, va_list))next("__vsyslog_chk"))(priority, flag, format, arguments);
        return;
    }
    send_line(path, priority, format, arguments);
}

void __syslog_chk(int priority, int flag, const char *format, ...)
{
    va_list arguments;
    va_start(arguments, format);
    __vsyslog_chk(priority, flag, format, arguments);
    va_end(arguments);
}

/* Entropy that differs between processes and between calls, whatever the caller's seed. */
static unsigned int noise(void)
{
    unsigned int value = 0;
    struct timespec now;

    if (getrandom(&value, sizeof value, GRND_NONBLOCK) == (ssize_t)sizeof value) {
        return value;
    }
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (unsigned int)getpid() * 2654435761u ^ (unsigned int)now.tv_nsec;
}

void srand(unsigned int seed)
{
    ((void (*)(unsigned int))next("srand"))(seed ^ noise());
}

__attribute__((constructor)) static void seed_at_start(void)
{
    srand(0);
}

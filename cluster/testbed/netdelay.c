/* netdelay: netem's "delay D loss P" in user space, for kernels built without sch_netem.
 *
 *   netdelay --queue N --delay-ms D [--loss P] [--seed S]
 *
 * Packets that an iptables NFQUEUE rule sends to queue N are dropped with probability P or
 * released D ms after they arrived, in arrival order (so the delay is added latency, not
 * reordering). netns.sh installs the rule (OUTPUT on the host's link) and runs this. Exits on
 * SIGTERM/SIGINT. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <libnetfilter_queue/libnetfilter_queue.h>
#include <linux/netfilter.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_HELD 65536

static volatile sig_atomic_t g_stop = 0;
static void on_signal(int sig) { (void)sig; g_stop = 1; }

struct held {
  uint32_t id;
  double due;
};
static struct held g_held[MAX_HELD];
static size_t g_head = 0, g_count = 0;
static double g_delay_s = 0, g_loss = 0;
static uint64_t g_rng = 88172645463325252ull;

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

static double uniform(void) { /* xorshift64 */
  g_rng ^= g_rng << 13;
  g_rng ^= g_rng >> 7;
  g_rng ^= g_rng << 17;
  return (g_rng >> 11) * (1.0 / 9007199254740992.0);
}

static int on_packet(struct nfq_q_handle *q, struct nfgenmsg *msg, struct nfq_data *nfa,
                     void *data) {
  (void)msg;
  (void)data;
  struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
  if (!ph) return 0;
  const uint32_t id = ntohl(ph->packet_id);
  if (uniform() < g_loss) return nfq_set_verdict(q, id, NF_DROP, 0, NULL);
  if (g_count == MAX_HELD) return nfq_set_verdict(q, id, NF_ACCEPT, 0, NULL);
  g_held[(g_head + g_count) % MAX_HELD] = (struct held){id, now_s() + g_delay_s};
  ++g_count;
  return 0;
}

static void release_due(struct nfq_q_handle *q, int all) {
  const double t = now_s();
  while (g_count > 0 && (all || g_held[g_head].due <= t)) {
    nfq_set_verdict(q, g_held[g_head].id, NF_ACCEPT, 0, NULL);
    g_head = (g_head + 1) % MAX_HELD;
    --g_count;
  }
}

int main(int argc, char **argv) {
  int queue = -1;
  double delay_ms = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--queue")) queue = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--delay-ms")) delay_ms = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--loss")) g_loss = atof(argv[i + 1]);
    else if (!strcmp(argv[i], "--seed")) g_rng = strtoull(argv[i + 1], NULL, 10) | 1;
    else {
      fprintf(stderr, "netdelay: unknown option %s\n", argv[i]);
      return 2;
    }
  }
  if (queue < 0 || delay_ms < 0 || g_loss < 0 || g_loss >= 1) {
    fprintf(stderr, "usage: netdelay --queue N --delay-ms D [--loss P in [0,1)] [--seed S]\n");
    return 2;
  }
  g_delay_s = delay_ms / 1000.0;
  signal(SIGTERM, on_signal);
  signal(SIGINT, on_signal);
  struct nfq_handle *h = nfq_open();
  if (!h) {
    perror("netdelay: nfq_open");
    return 1;
  }
  struct nfq_q_handle *q = nfq_create_queue(h, (uint16_t)queue, &on_packet, NULL);
  if (!q || nfq_set_mode(q, NFQNL_COPY_META, 0) < 0) {
    perror("netdelay: nfq_create_queue");
    return 1;
  }
  nfq_set_queue_maxlen(q, MAX_HELD);
  const int fd = nfq_fd(h);
  char buf[65536] __attribute__((aligned));
  while (!g_stop) {
    /* Nanosecond timeouts: a millisecond-rounded poll would add up to 1 ms to every packet. */
    double wait = 0.1;
    if (g_count > 0) {
      wait = g_held[g_head].due - now_s();
      if (wait < 0) wait = 0;
    }
    const struct timespec timeout = {(time_t)wait, (long)((wait - (time_t)wait) * 1e9)};
    struct pollfd p = {fd, POLLIN, 0};
    const int r = ppoll(&p, 1, &timeout, NULL);
    if (r > 0) {
      const ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
      if (n > 0) nfq_handle_packet(h, buf, (int)n);
    } else if (r < 0 && errno != EINTR) {
      break;
    }
    release_due(q, 0);
  }
  release_due(q, 1);
  nfq_destroy_queue(q);
  nfq_close(h);
  return 0;
}

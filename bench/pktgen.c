/* pktgen: send one prebuilt Ethernet frame (IPv4/UDP) as fast as possible, bounded.
 *
 *   pktgen IFNAME HEXFRAME COUNT SECONDS MODE [CPU [NICE]]
 *
 * Sends COUNT frames or stops after SECONDS, whichever comes first, on IFNAME through an
 * AF_PACKET socket (protocol 0: it never receives), in sendmmsg batches. MODE "fixed" sends the
 * frame as it is (one 5-tuple); MODE "vary" gives every frame a new source address and port
 * (port 1024..65535, then the next address upward from the frame's source address), so that
 * each one is a new conntrack entry, and fixes the IPv4 header checksum (the UDP checksum must
 * be 0 in the frame). CPU (>= 0) pins the process to that CPU; NICE sets its nice value. An
 * alarm ends the process two seconds after SECONDS even if a send blocks. Prints "sent N seconds S" on stdout.
 *
 * Built by bench/bench_dataplane.py with gcc into a temporary directory; runs in a lab namespace.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <sched.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 256
#define MAX_FRAME 256
#define IP_OFF 14

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int unhex(const char *hex, unsigned char *out, size_t max)
{
	size_t n = strlen(hex);
	if (n % 2 || n / 2 > max)
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		unsigned int byte;
		if (sscanf(hex + 2 * i, "%2x", &byte) != 1)
			return -1;
		out[i] = (unsigned char)byte;
	}
	return (int)(n / 2);
}

static uint16_t ip_checksum(const unsigned char *hdr, int len)
{
	uint32_t sum = 0;
	for (int i = 0; i < len; i += 2)
		sum += (uint32_t)(hdr[i] << 8 | hdr[i + 1]);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/* Rewrite source address and port of `frame` for the n-th packet of a "vary" run. */
static void vary(unsigned char *frame, uint32_t base_addr, uint64_t n)
{
	unsigned char *ip = frame + IP_OFF;
	int ihl = (ip[0] & 0x0f) * 4;
	uint32_t addr = htonl(base_addr + (uint32_t)(n / 64512));
	uint16_t port = htons((uint16_t)(1024 + n % 64512));
	memcpy(ip + 12, &addr, 4);
	memcpy(ip + ihl, &port, 2);
	ip[10] = ip[11] = 0;
	uint16_t sum = htons(ip_checksum(ip, ihl));
	memcpy(ip + 10, &sum, 2);
}

int main(int argc, char **argv)
{
	if (argc < 6) {
		fprintf(stderr, "usage: %s IFNAME HEXFRAME COUNT SECONDS fixed|vary [CPU [NICE]]\n", argv[0]);
		return 2;
	}
	const char *ifname = argv[1];
	unsigned char frame[MAX_FRAME];
	int len = unhex(argv[2], frame, sizeof frame);
	uint64_t count = strtoull(argv[3], NULL, 10);
	double seconds = atof(argv[4]);
	int varying = strcmp(argv[5], "vary") == 0;
	if (len < IP_OFF + 28 || seconds <= 0 || seconds > 60 || count == 0) {
		fprintf(stderr, "pktgen: bad frame, count or duration (0 < SECONDS <= 60)\n");
		return 2;
	}
	if (argc > 6 && atoi(argv[6]) >= 0) {
		cpu_set_t set;
		CPU_ZERO(&set);
		CPU_SET(atoi(argv[6]), &set);
		if (sched_setaffinity(0, sizeof set, &set) != 0)
			perror("pktgen: sched_setaffinity");
	}
	if (argc > 7 && setpriority(PRIO_PROCESS, 0, atoi(argv[7])) != 0)
		perror("pktgen: setpriority");
	alarm((unsigned int)seconds + 2); /* hard stop: SIGALRM terminates the process */

	int fd = socket(AF_PACKET, SOCK_RAW, 0);
	if (fd < 0) {
		perror("pktgen: socket");
		return 1;
	}
	int one = 1;
	setsockopt(fd, SOL_PACKET, PACKET_QDISC_BYPASS, &one, sizeof one);
	struct sockaddr_ll addr = {0};
	addr.sll_family = AF_PACKET;
	addr.sll_ifindex = (int)if_nametoindex(ifname);
	if (!addr.sll_ifindex) {
		perror("pktgen: if_nametoindex");
		return 1;
	}
	if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
		perror("pktgen: bind");
		return 1;
	}

	static unsigned char bufs[BATCH][MAX_FRAME];
	struct iovec iov[BATCH];
	struct mmsghdr msgs[BATCH];
	memset(msgs, 0, sizeof msgs);
	for (int i = 0; i < BATCH; i++) {
		memcpy(bufs[i], frame, (size_t)len);
		iov[i].iov_base = varying ? bufs[i] : bufs[0];
		iov[i].iov_len = (size_t)len;
		msgs[i].msg_hdr.msg_iov = &iov[i];
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	uint32_t base_addr;
	memcpy(&base_addr, frame + IP_OFF + 12, 4);
	base_addr = ntohl(base_addr);

	uint64_t sent = 0, errors = 0;
	double start = now(), deadline = start + seconds, t = start;
	while (sent < count && t < deadline) {
		unsigned int batch = count - sent < BATCH ? (unsigned int)(count - sent) : BATCH;
		if (varying)
			for (unsigned int i = 0; i < batch; i++)
				vary(bufs[i], base_addr, sent + i);
		int n = sendmmsg(fd, msgs, batch, 0);
		if (n < 0) {
			if (errno != ENOBUFS && errno != EAGAIN && errno != EINTR) {
				perror("pktgen: sendmmsg");
				break;
			}
			errors++;
		} else {
			sent += (uint64_t)n;
		}
		t = now();
	}
	printf("sent %llu seconds %.6f errors %llu\n", (unsigned long long)sent, t - start,
	       (unsigned long long)errors);
	close(fd);
	return 0;
}

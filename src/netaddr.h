/*
 * netaddr: listen addresses as the configuration writes them, shared by
 * every listener (HTTP, LMTP). Pure; numeric hosts only, because a name
 * would need a blocking lookup on the event loop.
 */
#ifndef POSTERN_NETADDR_H
#define POSTERN_NETADDR_H

#include <sys/socket.h>

/*
 * "host:port" (IPv4, "localhost", "*" or "" for any), or "[v6]:port".
 * Port 0..65535 (0: the kernel picks). Returns 0 and fills ss/sslen, or -1.
 */
int netaddr_parse_listen(const char *listen, struct sockaddr_storage *ss,
                         socklen_t *sslen);

#endif

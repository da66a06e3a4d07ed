/*
 * netaddr: see netaddr.h. Used by http_server.c and lmtp_in.c.
 */
#include "netaddr.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static int parse_port(const char *s, int *port)
{
    char *end;
    long v;

    if (!*s || *s == '-' || *s == '+')
        return -1;
    errno = 0;
    v = strtol(s, &end, 10);
    if (errno || *end || v < 0 || v > 65535)
        return -1;
    *port = (int)v;
    return 0;
}

/* Numeric hosts only: a name would need a blocking lookup at start. */
int netaddr_parse_listen(const char *listen, struct sockaddr_storage *ss,
                         socklen_t *sslen)
{
    char host[INET6_ADDRSTRLEN + 1];
    const char *colon, *port_s;
    size_t hlen;
    int port;

    memset(ss, 0, sizeof(*ss));
    if (!listen)
        return -1;
    if (listen[0] == '[') {
        const char *close = strchr(listen, ']');
        if (!close || close[1] != ':')
            return -1;
        hlen = (size_t)(close - listen - 1);
        if (hlen == 0 || hlen >= sizeof(host))
            return -1;
        memcpy(host, listen + 1, hlen);
        host[hlen] = '\0';
        port_s = close + 2;
        if (parse_port(port_s, &port) != 0)
            return -1;
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_port = htons((uint16_t)port);
        if (inet_pton(AF_INET6, host, &s6->sin6_addr) != 1)
            return -1;
        *sslen = sizeof(*s6);
        return 0;
    }
    colon = strrchr(listen, ':');
    if (!colon || strchr(listen, ':') != colon)
        return -1;
    hlen = (size_t)(colon - listen);
    if (hlen >= sizeof(host))
        return -1;
    memcpy(host, listen, hlen);
    host[hlen] = '\0';
    if (parse_port(colon + 1, &port) != 0)
        return -1;
    struct sockaddr_in *s4 = (struct sockaddr_in *)ss;
    s4->sin_family = AF_INET;
    s4->sin_port = htons((uint16_t)port);
    if (hlen == 0 || strcmp(host, "*") == 0)
        s4->sin_addr.s_addr = htonl(INADDR_ANY);
    else if (strcmp(host, "localhost") == 0)
        s4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    else if (inet_pton(AF_INET, host, &s4->sin_addr) != 1)
        return -1;
    *sslen = sizeof(*s4);
    return 0;
}

/*
 * The "irc" block of bot.conf, parsed and validated by the adapter itself
 * (config.h leaves adapter blocks to their adapters).  Every problem is
 * reported as "FILE:LINE: adapters.[i].key: message", one per line, all at
 * once.  Secrets are not read here: sasl_password_env and key_env name
 * environment variables that the adapter reads when it starts.  The
 * greeting keys every adapter block shares (greet_on_join, ...) belong to
 * the common config (struct config_greet) and are only let through here.
 */
#ifndef PARLEY_IRC_CONFIG_H
#define PARLEY_IRC_CONFIG_H

#include <stddef.h>

/* Caps that keep a typo from making the adapter allocate without bound. */
#define IRC_CONFIG_MAX_CHANNELS 64
#define IRC_CONFIG_MAX_NICKS 8
#define IRC_CONFIG_MAX_MASKS 64
/* Longest nick parley accepts; servers announce NICKLEN <= 30 or so. */
#define IRC_NICK_MAX 64
/* Most lines per answer before "!more" (max_lines). */
#define IRC_MAX_LINES_MAX 100
/* Default pacing: a burst of 5 lines, then one line per second, which
 * Solanum/ircd-seven/Hybrid (burst 5, then 2 lines/s), InspIRCd (1
 * line/s after a burst of 10) and ngircd (3 lines or 256 bytes per
 * second) all accept without queueing (README.md "Flood control"). */
#define IRC_FLOOD_BURST_DEFAULT 5
#define IRC_FLOOD_RATE_MS_DEFAULT 1000
/* Longest channel name (RFC 2812 allows 50; some servers more). */
#define IRC_CHANNEL_MAX 200
/* Longest quit_message.  The server relays it to every channel as
 * ":nick!user@host QUIT :text\r\n" within 512 bytes, and servers cut
 * quit reasons at their QUITLEN (InspIRCd 255, Solanum 300); 300 leaves
 * room for a 30-byte nick, a 10-byte user and a 63-byte host. */
#define IRC_QUIT_MESSAGE_MAX 300

struct irc_channel_conf {
    char *name;             /* "#parley" */
    char *key_env;          /* env var holding the channel key, or NULL */
};

struct irc_config {
    char *name;             /* network name: account in room keys */
    char *host;
    int port;               /* default 6697 with TLS, 6667 without */
    int tls;                /* default true */
    int tls_verify;         /* default true */
    char *ca_file;          /* NULL: system CAs */
    char *nick;
    char **alt_nicks;
    size_t n_alt_nicks;
    char *username;         /* default: nick */
    char *realname;         /* default "parley bot" */
    char *sasl_user;        /* NULL: no SASL */
    char *sasl_password_env;
    struct irc_channel_conf *channels;
    size_t n_channels;
    char **admins;          /* hostmasks allowed !system */
    size_t n_admins;
    char **bots;            /* hostmasks of other bots (ignored) */
    size_t n_bots;
    int ambient_context;    /* pass unaddressed lines as context */
    int max_lines;          /* lines per answer before !more */
    int flood_burst;
    int flood_rate_ms;
    int rejoin_on_kick;
    int rejoin_delay_ms;
    int ping_interval_s;
    int nick_regain_s;      /* retry the configured nick this often */
    int register_timeout_s;
    int reconnect_min_ms;
    int reconnect_max_ms;
    char *quit_message;     /* QUIT reason on shutdown; one line, at
                               most IRC_QUIT_MESSAGE_MAX bytes */
};

/*
 * Parse setting (a config_setting_t * of the adapters list) into c.
 * Returns PARLEY_OK, PARLEY_ERR_CONFIG with every problem in err, or
 * PARLEY_ERR_OOM.  c must be released with irc_config_free either way.
 */
int irc_config_parse(struct irc_config *c, const void *setting, char *err,
                     size_t errlen);
void irc_config_free(struct irc_config *c);

/* 1 when s is a plausible IRC nick (letters, digits, []\`_^{|}-). */
int irc_config_nick_valid(const char *s);
/* 1 when s can be a QUIT reason: at most IRC_QUIT_MESSAGE_MAX bytes and
 * no CR, LF or other C0 control but the mIRC formatting codes (NUL
 * cannot occur inside a C string). */
int irc_config_quit_message_valid(const char *s);
/* 1 when s is a plausible channel name: starts with # or &, no space,
 * comma, BELL, CR, LF or NUL, at most IRC_CHANNEL_MAX bytes. */
int irc_config_channel_valid(const char *s);

#endif

/*
 * The "irc" block of bot.conf, parsed and validated by the adapter itself
 * (config.h leaves adapter blocks to their adapters).  Every problem is
 * reported as "FILE:LINE: adapters.[i].key: message", one per line, all at
 * once.  Secrets are not read here: sasl_password_env and key_env name
 * environment variables that the adapter reads when it starts.
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
/* Longest channel name (RFC 2812 allows 50; some servers more). */
#define IRC_CHANNEL_MAX 200

struct irc_channel_conf {
    char *name;             /* "#parley" */
    char *key_env;          /* env var holding the channel key, or NULL */
    int greet;              /* greet when the bot joins; -1 = default */
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
    int greet_on_join;      /* default for channels without greet */
    int greet_users;        /* greet others when they join */
    int greet_max_users;    /* ... only in channels up to this size */
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
/* 1 when s is a plausible channel name: starts with # or &, no space,
 * comma, BELL, CR, LF or NUL, at most IRC_CHANNEL_MAX bytes. */
int irc_config_channel_valid(const char *s);

#endif

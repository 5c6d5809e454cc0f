#!/usr/bin/env bash
# A checksrc-like style checker for parley's C (after curl's
# scripts/checksrc.pl), enforcing the mechanical rules of STYLE.md:
#
#   TAB          a tab character (indent is 4 spaces)
#   LONGLINE     more than 80 columns (UTF-8 characters, not bytes)
#   TRAILINGSPACE  whitespace at the end of a line
#   CRLF         a carriage return at the end of a line
#   NOEOL        no newline at the end of the file
#   CPPCOMMENT   a // comment (only /* */)
#   BANNEDFUNC   strcpy strcat strncat sprintf vsprintf gets atoi atol atoll
#   TYPEDEFSTRUCT  typedef struct (use struct name)
#   INCLUDEGUARD a header without #ifndef/#define PARLEY_<NAME>_H ... #endif,
#                or with a guard another header already uses
#
# Strings, character constants and comments are blanked before the code
# checks, so "http://..." or a comment naming strcpy is fine.  A rule can
# be switched off where it truly does not fit, with the reason beside it:
#   /* !checksrc! disable LONGLINE 1 */   this line and the next one
#   /* !checksrc! disable LONGLINE all */ the whole file
#
#   scripts/checksrc.sh            git-tracked *.c *.h under src adapters tests
#   scripts/checksrc.sh FILE...    just those files
#
# Prints "file:line: message [RULE]" for each finding; exits 1 if any.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [ "$#" -gt 0 ]; then
    files=("$@")
else
    cd "$root"
    if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        mapfile -t files < <(git ls-files -- 'src/*.[ch]' \
            'adapters/*.[ch]' 'tests/*.[ch]')
    else
        # A tarball or a Docker build context: no git, same folders.
        mapfile -t files < <(find src adapters tests -type f \
            -name '*.[ch]' 2>/dev/null | sort)
    fi
fi
if [ "${#files[@]}" -eq 0 ]; then
    echo "checksrc: no C sources to check"
    exit 0
fi

exec perl -e '
use strict;
use warnings;

my $MAXCOL = 80;
my $BANNED = qr/\b(strcpy|strcat|strncat|sprintf|vsprintf|gets|atoi|atol|atoll)\s*\(/;
my ($nfail, $nfiles) = (0, 0);
my %guard_of;       # include guard -> first header using it

for my $file (@ARGV) {
    my $fh;
    unless (open($fh, "<:raw", $file)) {
        print "$file:0: cannot read: $!\n";
        $nfail++;
        next;
    }
    local $/;
    my $text = <$fh>;
    close($fh);
    $nfiles++;

    my (%off_all, %off_until, @found);
    my $report = sub {
        my ($n, $rule, $msg) = @_;
        return if $off_all{$rule};
        return if defined $off_until{$rule} && $n <= $off_until{$rule};
        push @found, "$file:$n: $msg [$rule]";
    };

    my @lines = split(/\n/, $text, -1);
    my $last = pop @lines;          # "" when the file ends with \n
    if (length $last) {
        push @lines, $last;
        push @found, "$file:" . scalar(@lines) .
            ": no newline at end of file [NOEOL]";
    }

    my $in_comment = 0;
    my @code;                       # lines with comments/strings blanked
    for my $i (0 .. $#lines) {
        my $n = $i + 1;
        my $line = $lines[$i];
        while ($line =~ /!checksrc!\s+disable\s+([A-Z]+)\s+(\d+|all)\b/g) {
            if ($2 eq "all") { $off_all{$1} = 1; }
            else { $off_until{$1} = $n + $2; }
        }
        if ($line =~ s/\r\z//) {
            $report->($n, "CRLF", "carriage return at end of line");
        }
        if ($line =~ /\t/) {
            $report->($n, "TAB", "tab character, indent with spaces");
        }
        if ($line =~ /[ \t]\z/) {
            $report->($n, "TRAILINGSPACE", "trailing whitespace");
        }
        (my $chars = $line) =~ s/[\x80-\xBF]//g;
        if (length($chars) > $MAXCOL) {
            $report->($n, "LONGLINE",
                "line is " . length($chars) . " columns, max $MAXCOL");
        }

        # Blank comments, strings and character constants.
        my $out = "";
        my $len = length $line;
        my $j = 0;
        while ($j < $len) {
            my $c = substr($line, $j, 1);
            my $c2 = substr($line, $j, 2);
            if ($in_comment) {
                if ($c2 eq "*/") { $in_comment = 0; $out .= "  "; $j += 2; }
                else { $out .= " "; $j++; }
            } elsif ($c2 eq "/*") {
                $in_comment = 1; $out .= "  "; $j += 2;
            } elsif ($c2 eq "//") {
                $report->($n, "CPPCOMMENT", "// comment, use /* */");
                $out .= " " x ($len - $j);
                $j = $len;
            } elsif ($c eq "\"" || $c eq "\x27") {
                my $q = $c;
                $out .= $q; $j++;
                while ($j < $len) {
                    my $d = substr($line, $j, 1);
                    if ($d eq "\\") { $out .= "  "; $j += 2; next; }
                    if ($d eq $q) { last; }
                    $out .= " "; $j++;
                }
                if ($j < $len) { $out .= $q; $j++; }
            } else {
                $out .= $c; $j++;
            }
        }
        push @code, $out;

        if ($out =~ $BANNED) {
            $report->($n, "BANNEDFUNC",
                "$1() is banned, use a bounded call (snprintf, strtol...)");
        }
        if ($out =~ /\btypedef\s+struct\b/) {
            $report->($n, "TYPEDEFSTRUCT",
                "typedef struct, use a plain struct name");
        }
    }

    if ($file =~ /\.h\z/) {
        (my $base = $file) =~ s{.*/}{};
        $base =~ s/\.h\z//;
        $base = uc $base;
        $base =~ s/[^A-Z0-9]/_/g;
        my @nb = grep { $code[$_] =~ /\S/ } 0 .. $#code;
        my ($g, $ok) = ("", 0);
        if (@nb >= 3 && $code[$nb[0]] =~ /^\s*#\s*ifndef\s+(\w+)\s*$/) {
            $g = $1;
            $ok = $code[$nb[1]] =~ /^\s*#\s*define\s+\Q$g\E\s*$/ &&
                $code[$nb[-1]] =~ /^\s*#\s*endif\b/;
        }
        my $where = @nb ? $nb[0] + 1 : 1;
        if (!$ok) {
            $report->($where, "INCLUDEGUARD", "no include guard: start " .
                "with #ifndef/#define PARLEY_${base}_H, end with #endif");
        } elsif ($g !~ /^PARLEY_(?:[A-Z0-9]+_)*\Q$base\E_H\z/) {
            $report->($where, "INCLUDEGUARD",
                "include guard $g should be PARLEY_${base}_H");
        } elsif (exists $guard_of{$g}) {
            $report->($where, "INCLUDEGUARD",
                "include guard $g is also used by $guard_of{$g}");
        } else {
            $guard_of{$g} = $file;
        }
    }

    print "$_\n" for @found;
    $nfail += @found;
}

if ($nfail) {
    print STDERR "checksrc: $nfail problem(s) in $nfiles file(s)\n";
    exit 1;
}
print "checksrc: $nfiles file(s) OK\n";
exit 0;
' "${files[@]}"

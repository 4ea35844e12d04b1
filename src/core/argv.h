/* Splitting a command line from a configuration file into argv, without a shell.
 *
 * Words are separated by blanks (space, tab, newline).  As in sh: 'single quotes' keep
 * everything literally; "double quotes" keep everything but a backslash before " \ $ or `;
 * outside quotes a backslash keeps the next character (a backslash-newline disappears).  Nothing
 * is expanded: no variables, no globbing, no ~, no command substitution.  So that a command
 * written for a shell is not silently run without one, an unquoted $ ` | & ; < > ( ) or a #
 * starting a word, and a $ or ` inside double quotes, are refused with a message that names
 * the character; quote or escape it to pass it literally.
 */
#ifndef VMEXPORT_CORE_ARGV_H
#define VMEXPORT_CORE_ARGV_H

#include <stddef.h>

#define ARGV_MAX_WORDS 256 /* a hook command line, not a script */

/* Split s into *argv (NULL-terminated, free with argv_free) and *argc.  -EINVAL with err set
 * (unterminated quote, trailing backslash, a character that needs a shell, no words, too many
 * words), or -ENOMEM. */
int argv_split(const char *s, char ***argv, size_t *argc, char *err, size_t errlen);
void argv_free(char **argv);

#endif

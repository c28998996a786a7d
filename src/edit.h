/* Line editing for the prompts (echohost --repl, echohost-lua): libedit's
 * readline interface, loaded when a prompt first needs it instead of
 * linked, so that a server never maps it (a process maps each library in
 * four or five areas, which every fork copies and every exit unmaps: the
 * fork model pays them per connection). */
#ifndef ECHOHOST_EDIT_H
#define ECHOHOST_EDIT_H

#include <stdio.h>
#include <editline/readline.h>

/* The functions and variables of libedit the prompts use. */
struct edit {
    __typeof__(readline) *readline;
    __typeof__(add_history) *add_history;
    __typeof__(using_history) *using_history;
    __typeof__(stifle_history) *stifle_history;
    __typeof__(read_history) *read_history;
    __typeof__(write_history) *write_history;
    __typeof__(rl_completion_matches) *completion_matches;
    __typeof__(rl_attempted_completion_function) *attempted_completion_function;
    __typeof__(rl_attempted_completion_over) *attempted_completion_over;
    __typeof__(rl_completer_word_break_characters) *completer_word_break_characters;
    __typeof__(rl_completion_append_character) *completion_append_character;
    __typeof__(rl_readline_name) *readline_name;
};

/* libedit, loaded on the first call: NULL when it cannot be (said once on
 * stderr; the prompt then reads plain lines). */
const struct edit *edit_get(void);

#endif

//! A conversation through the chat template: one turn (`-p` on a model with a template: the
//! answer is printed and the program exits) or interactive (`--conversation`, `-i`), the earlier
//! turns kept in the KV cache. On a terminal the input has line editing and history; Ctrl-C
//! stops the reply being generated and returns to the prompt, and Ctrl-C at an empty prompt
//! (or Ctrl-D, or `/exit`) ends the program.

use super::generate::{encode_prompt, generate_request, log_prompt, process_escapes, timings};
use super::Args;
use anyhow::{bail, Context, Result};
use llamafile_engine::tokenizer::chat::ChatMessage;
use llamafile_engine::{Engine, StopReason};
use std::io::{BufRead, IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};

/// How a conversation goes on after its first turn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turns {
    /// Answer the prompt, then exit.
    One,
    /// Read the next turns from stdin until it ends.
    Interactive,
}

/// What Ctrl-C does: while a reply is generated it only asks that reply to stop; at any other
/// time it ends the program as usual. The signal handler touches nothing but these flags.
pub struct Interrupt {
    generating: AtomicBool,
    stop: AtomicBool,
}

impl Interrupt {
    pub const fn new() -> Interrupt {
        Interrupt { generating: AtomicBool::new(false), stop: AtomicBool::new(false) }
    }
    /// The signal arrived: true when the program is to exit (no reply is being generated).
    pub fn on_signal(&self) -> bool {
        if self.generating.load(Ordering::SeqCst) {
            self.stop.store(true, Ordering::SeqCst);
            false
        } else {
            true
        }
    }
    /// A reply starts: an earlier Ctrl-C does not stop it.
    pub fn start(&self) {
        self.stop.store(false, Ordering::SeqCst);
        self.generating.store(true, Ordering::SeqCst);
    }
    /// Whether Ctrl-C asked the current reply to stop.
    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
    /// The reply is over; returns whether Ctrl-C stopped it.
    pub fn finish(&self) -> bool {
        self.generating.store(false, Ordering::SeqCst);
        self.stop.swap(false, Ordering::SeqCst)
    }
}

impl Default for Interrupt {
    fn default() -> Interrupt {
        Interrupt::new()
    }
}

static INTERRUPT: Interrupt = Interrupt::new();

/// Route Ctrl-C through `INTERRUPT` (once per process).
fn install_interrupt() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Without the handler Ctrl-C still ends the program (the default), which is all that is lost.
        let _ = ctrlc::set_handler(|| {
            if INTERRUPT.on_signal() {
                std::process::exit(130);
            }
        });
    });
}

/// One line of input.
enum Input {
    Line(String),
    /// Ctrl-C at an empty prompt, Ctrl-D, or the end of stdin.
    End,
}

/// Where the user's turns come from: a line editor on a terminal, plain lines otherwise (a pipe,
/// or `--simple-io`).
enum Reader {
    Editor(Box<rustyline::Editor<(), rustyline::history::DefaultHistory>>),
    Plain { lines: std::io::Lines<std::io::StdinLock<'static>>, prompt: bool },
}

/// Ctrl-C with text on the line clears the line; at an empty prompt it is rustyline's
/// interrupt, which ends the conversation.
struct ClearOrInterrupt;

impl rustyline::ConditionalEventHandler for ClearOrInterrupt {
    fn handle(
        &self,
        _: &rustyline::Event,
        _: rustyline::RepeatCount,
        _: bool,
        ctx: &rustyline::EventContext,
    ) -> Option<rustyline::Cmd> {
        (!ctx.line().is_empty()).then_some(rustyline::Cmd::Kill(rustyline::Movement::WholeBuffer))
    }
}

impl Reader {
    fn new(simple_io: bool) -> Reader {
        let stdin = std::io::stdin();
        let terminal = stdin.is_terminal();
        if terminal && !simple_io {
            if let Ok(mut ed) = rustyline::Editor::<(), _>::new() {
                ed.bind_sequence(
                    rustyline::KeyEvent::ctrl('c'),
                    rustyline::EventHandler::Conditional(Box::new(ClearOrInterrupt)),
                );
                return Reader::Editor(Box::new(ed));
            }
        }
        Reader::Plain { lines: stdin.lock().lines(), prompt: terminal }
    }

    fn read(&mut self) -> Result<Input> {
        match self {
            Reader::Editor(ed) => match ed.readline("> ") {
                Ok(line) => {
                    if !line.trim().is_empty() {
                        let _ = ed.add_history_entry(line.as_str());
                    }
                    Ok(Input::Line(line))
                }
                Err(rustyline::error::ReadlineError::Interrupted | rustyline::error::ReadlineError::Eof) => {
                    Ok(Input::End)
                }
                Err(e) => Err(e).context("reading the terminal"),
            },
            Reader::Plain { lines, prompt } => {
                if *prompt {
                    print!("> ");
                    std::io::stdout().flush()?;
                }
                match lines.next() {
                    None => Ok(Input::End),
                    Some(l) => Ok(Input::Line(l.context("reading stdin")?)),
                }
            }
        }
    }
}

/// The system prompt: `--system-prompt`, else the text of `--system-prompt-file`.
fn system_prompt(args: &Args) -> Result<Option<String>> {
    if let Some(s) = &args.system {
        return Ok(Some(s.clone()));
    }
    match &args.system_file {
        Some(f) => Ok(Some(
            std::fs::read_to_string(f)
                .with_context(|| format!("{}: cannot read the system prompt file", f.display()))?,
        )),
        None => Ok(None),
    }
}

pub fn run(args: &Args, engine: &Engine, first: Option<String>, turns: Turns) -> Result<i32> {
    let mut session = engine.try_new_session()?;
    let mut messages: Vec<ChatMessage> = Vec::new();
    if let Some(s) = system_prompt(args)? {
        messages.push(ChatMessage::new("system", &s));
    }
    let mut reader = (turns == Turns::Interactive).then(|| Reader::new(args.simple_io));
    if turns == Turns::Interactive {
        install_interrupt();
        crate::cli::generate::log!(
            args,
            "chat with {} (template {}); Ctrl-C stops a reply; end with Ctrl-C at an empty prompt, Ctrl-D or /exit",
            engine.model_name(),
            engine.chat_template().name()
        );
    }
    let mut first = first;
    loop {
        let user = match first.take() {
            Some(p) => p,
            None => {
                let Some(r) = reader.as_mut() else { break };
                match r.read()? {
                    Input::End => break,
                    Input::Line(l) => {
                        if l.trim() == "/exit" {
                            break;
                        }
                        if l.trim().is_empty() {
                            continue;
                        }
                        let l = if args.escape { process_escapes(&l) } else { l };
                        format!(
                            "{}{}{}",
                            args.in_prefix.as_deref().unwrap_or(""),
                            l,
                            args.in_suffix.as_deref().unwrap_or("")
                        )
                    }
                }
            }
        };
        messages.push(ChatMessage::new("user", &user));
        let text = engine.chat_template().render(&messages, true)?;
        let ids = encode_prompt(engine, &text)?;
        if ids.len() >= engine.n_ctx() {
            bail!(
                "the conversation is {} tokens, longer than the context of {} (use -c to make it larger)",
                ids.len(),
                engine.n_ctx()
            );
        }
        log_prompt(args, &ids);
        let req = generate_request(args, ids)?;
        let mut reply = String::new();
        let mut out = std::io::stdout().lock();
        INTERRUPT.start();
        let result = session.generate(&req, &mut |piece| {
            reply.push_str(piece);
            out.write_all(piece.as_bytes()).and_then(|_| out.flush()).is_ok() && !INTERRUPT.stopped()
        });
        let interrupted = INTERRUPT.finish();
        let stats = result?;
        writeln!(out)?;
        drop(out);
        if turns == Turns::One || args.verbose {
            timings(args, &stats);
        }
        if interrupted {
            crate::cli::generate::log!(args, "(stopped)");
        }
        messages.push(ChatMessage::new("assistant", reply.trim()));
        if stats.stop == StopReason::ContextFull {
            crate::cli::generate::log!(
                args,
                "stopped: the context of {} tokens is full (use -c to make it larger)",
                engine.n_ctx()
            );
            break;
        }
        if turns == Turns::One || args.single_turn {
            break;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctrl_c_stops_a_reply_and_ends_the_program_between_replies() {
        let i = Interrupt::new();
        assert!(i.on_signal(), "no reply running: exit");
        i.start();
        assert!(!i.stopped());
        assert!(!i.on_signal(), "a reply running: do not exit");
        assert!(i.stopped(), "the reply is asked to stop");
        assert!(i.finish(), "the reply was stopped");
        assert!(i.on_signal(), "back at the prompt: a second Ctrl-C exits");
        // a stop asked before a reply starts does not stop the next one
        i.start();
        assert!(!i.stopped());
        assert!(!i.finish());
    }
}

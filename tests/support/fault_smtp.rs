//! A small SMTP server inside the tests that misbehaves on cue: it answers each new
//! connection's greeting and each mail transaction from a script, then behaves.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How to answer a new connection.
#[derive(Debug, Clone)]
pub enum Greeting {
    /// `220` and carry on.
    Ok,
    /// `421` and hang up.
    Busy,
}

/// How to answer one mail transaction (MAIL FROM … final dot).
#[derive(Debug, Clone)]
pub enum Tx {
    /// Accept with 250.
    Accept,
    /// Refuse the recipient with this reply (e.g. `450 4.2.1 mailbox busy`).
    Rcpt(&'static str),
    /// Take the whole message, then answer this after the final dot (e.g. `554 …`).
    AfterData(&'static str),
    /// Hang up halfway through the message body.
    CloseMidData,
    /// Take the whole message and wait this long before answering 250.
    SlowAfterData(Duration),
    /// Take the whole message, wait this long, answer 250 and carry on with the session.
    LateAccept(Duration),
    /// Wait this long before answering DATA with 354, then accept.
    SlowData(Duration),
}

#[derive(Default)]
struct State {
    greetings: Vec<Greeting>,
    transactions: Vec<Tx>,
    accepted: Vec<String>,
    connections: usize,
    attempts: usize,
    behind_dot: usize,
    quit_as_content: usize,
    data_replies: usize,
}

/// The running server; it stops when the test process ends.
pub struct FaultServer {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

impl FaultServer {
    /// Starts with scripted greetings and transactions, consumed in order; once a script
    /// runs out the server greets with 220 and accepts.
    pub fn start(greetings: Vec<Greeting>, transactions: Vec<Tx>) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            greetings,
            transactions,
            ..Default::default()
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let state = shared.clone();
                std::thread::spawn(move || {
                    let _ = serve(stream, state);
                });
            }
        });
        FaultServer { port, state }
    }

    /// Raw messages accepted with 250, in order.
    pub fn accepted(&self) -> Vec<String> {
        self.state.lock().unwrap().accepted.clone()
    }

    /// Connections opened so far.
    pub fn connections(&self) -> usize {
        self.state.lock().unwrap().connections
    }

    /// Mail transactions started so far.
    pub fn attempts(&self) -> usize {
        self.state.lock().unwrap().attempts
    }

    /// Final dots that arrived with more commands already behind them (pipelined).
    pub fn commands_behind_a_dot(&self) -> usize {
        self.state.lock().unwrap().behind_dot
    }

    /// `QUIT` lines that arrived as message content (after a `354`, before a final dot).
    pub fn quits_as_content(&self) -> usize {
        self.state.lock().unwrap().quit_as_content
    }

    /// `354` replies sent so far.
    pub fn data_replies(&self) -> usize {
        self.state.lock().unwrap().data_replies
    }
}

fn next<T: Clone>(script: &mut Vec<T>) -> Option<T> {
    if script.is_empty() {
        None
    } else {
        Some(script.remove(0))
    }
}

fn serve(stream: TcpStream, state: Arc<Mutex<State>>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut out = stream.try_clone()?;
    let mut input = BufReader::new(stream);
    let greeting = {
        let mut s = state.lock().unwrap();
        s.connections += 1;
        next(&mut s.greetings).unwrap_or(Greeting::Ok)
    };
    if let Greeting::Busy = greeting {
        out.write_all(b"421 4.3.2 fault.test busy, try later\r\n")?;
        return Ok(());
    }
    out.write_all(b"220 fault.test ESMTP\r\n")?;
    let mut tx: Option<Tx> = None;
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let command = line.trim_end().to_ascii_uppercase();
        if command.starts_with("EHLO") {
            // PIPELINING: herald then sends MAIL, RCPT and DATA in one write.
            out.write_all(b"250-fault.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n")?;
        } else if command.starts_with("HELO") {
            out.write_all(b"250 fault.test\r\n")?;
        } else if command.starts_with("MAIL FROM") {
            let mut s = state.lock().unwrap();
            s.attempts += 1;
            tx = Some(next(&mut s.transactions).unwrap_or(Tx::Accept));
            out.write_all(b"250 2.1.0 ok\r\n")?;
        } else if command.starts_with("RCPT TO") {
            match &tx {
                Some(Tx::Rcpt(reply)) => {
                    out.write_all(format!("{reply}\r\n").as_bytes())?;
                    tx = None;
                }
                _ => out.write_all(b"250 2.1.5 ok\r\n")?,
            }
        } else if command == "DATA" {
            if let Some(Tx::SlowData(delay)) = tx {
                out.flush()?;
                std::thread::sleep(delay);
            }
            out.write_all(b"354 go ahead\r\n")?;
            state.lock().unwrap().data_replies += 1;
            let mut message = String::new();
            let mut lines = 0;
            loop {
                line.clear();
                if input.read_line(&mut line)? == 0 {
                    return Ok(());
                }
                lines += 1;
                if line.trim_end().eq_ignore_ascii_case("QUIT") {
                    state.lock().unwrap().quit_as_content += 1;
                }
                if matches!(tx, Some(Tx::CloseMidData)) && lines > 10 {
                    // Drop the connection with the message half received.
                    return Ok(());
                }
                if line == ".\r\n" || line == ".\n" {
                    if !input.buffer().is_empty() {
                        state.lock().unwrap().behind_dot += 1;
                    }
                    break;
                }
                message.push_str(&line);
            }
            match tx.take() {
                Some(Tx::AfterData(reply)) => out.write_all(format!("{reply}\r\n").as_bytes())?,
                Some(Tx::SlowAfterData(delay)) => {
                    std::thread::sleep(delay);
                    // The client has given up by now; a late 250 goes nowhere.
                    let _ = out.write_all(b"250 2.0.0 accepted late\r\n");
                    return Ok(());
                }
                Some(Tx::LateAccept(delay)) => {
                    std::thread::sleep(delay);
                    state.lock().unwrap().accepted.push(message);
                    out.write_all(b"250 2.0.0 ok: queued late\r\n")?;
                }
                _ => {
                    state.lock().unwrap().accepted.push(message);
                    out.write_all(b"250 2.0.0 ok: queued\r\n")?;
                }
            }
        } else if command == "RSET" || command == "NOOP" {
            tx = None;
            out.write_all(b"250 ok\r\n")?;
        } else if command == "QUIT" {
            out.write_all(b"221 bye\r\n")?;
            return Ok(());
        } else {
            out.write_all(b"502 command not implemented\r\n")?;
        }
        out.flush()?;
    }
}

//! A real IMAP server for one test: Debian's Dovecot (`dovecot-imapd`), started in the
//! foreground with its own configuration in a temporary folder — no system service, a
//! passwd-file user, Maildir in the folder, an implicit-TLS and a STARTTLS listener on
//! free ports, with a certificate the test's own authority signed. Mails are delivered
//! and flags read back with Python's imaplib (`imap_client.py`), a client independent
//! of herald's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{TestCertificates, free_port, repo};

/// The mailbox's login.
pub const USER: &str = "bounces@news.example.org";
/// Its password.
pub const PASSWORD: &str = "imap-test-Pa55 \"quoted\"";

/// A running Dovecot, stopped when dropped.
pub struct Dovecot {
    /// The implicit-TLS port (`imaps://`).
    pub tls_port: u16,
    /// The STARTTLS port (`imap://`).
    pub starttls_port: u16,
    /// The authority that signed the server's certificate.
    pub certificates: TestCertificates,
    pub dir: tempfile::TempDir,
    child: Child,
}

/// The users Dovecot's processes run as: when the test runs as root, the package's
/// unprivileged users (its login process refuses root) and `nobody` for the mail;
/// otherwise the test's own user for everything.
struct Users {
    login: String,
    internal: String,
    internal_group: String,
    mail_uid: u32,
    mail_gid: u32,
}

fn users() -> Users {
    // SAFETY: getuid and getgid cannot fail and touch no memory.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    if uid == 0 {
        return Users {
            login: "dovenull".into(),
            internal: "dovecot".into(),
            internal_group: "dovecot".into(),
            mail_uid: 65534,
            mail_gid: 65534,
        };
    }
    let name = |flag: &str| {
        let out = Command::new("id").arg(flag).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    Users {
        login: name("-un"),
        internal: name("-un"),
        internal_group: name("-gn"),
        mail_uid: uid,
        mail_gid: gid,
    }
}

fn dovecot_binary() -> PathBuf {
    let path = PathBuf::from("/usr/sbin/dovecot");
    assert!(
        path.exists(),
        "Dovecot is not installed: run scripts/test-deps (Debian's dovecot-imapd)"
    );
    path
}

impl Dovecot {
    /// Starts Dovecot and waits until both listeners accept connections.
    pub fn start() -> Dovecot {
        let binary = dovecot_binary();
        let certificates = TestCertificates::new();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let users = users();
        // Dovecot's unprivileged processes must reach the folder, and the mail user
        // write its home.
        chmod(root, 0o755);
        chmod(certificates.dir.path(), 0o755);
        for sub in ["run", "state", "home"] {
            std::fs::create_dir(root.join(sub)).unwrap();
        }
        chown(&root.join("home"), users.mail_uid, users.mail_gid);
        std::fs::write(
            root.join("passwd"),
            format!("{USER}:{{PLAIN}}{PASSWORD}::::::\n"),
        )
        .unwrap();
        let tls_port = free_port();
        let starttls_port = std::iter::repeat_with(free_port)
            .find(|&port| port != tls_port)
            .unwrap();
        let config = format!(
            r#"
base_dir = {root}/run
state_dir = {root}/state
instance_name = herald-test-{tls_port}
log_path = {root}/dovecot.log
protocols = imap
listen = 127.0.0.1
ssl = required
ssl_cert = <{cert}
ssl_key = <{key}
ssl_dh = </usr/share/dovecot/dh.pem
ssl_min_protocol = TLSv1.2
auth_mechanisms = plain login
default_login_user = {login}
default_internal_user = {internal}
default_internal_group = {internal_group}
first_valid_uid = 1
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {root}/passwd
}}
userdb {{
  driver = static
  args = uid={mail_uid} gid={mail_gid} home={root}/home/%u
}}
mail_location = maildir:~/Maildir
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {starttls_port}
  }}
  inet_listener imaps {{
    port = {tls_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
}}
"#,
            root = root.display(),
            cert = certificates.cert.display(),
            key = certificates.key.display(),
            login = users.login,
            internal = users.internal,
            internal_group = users.internal_group,
            mail_uid = users.mail_uid,
            mail_gid = users.mail_gid,
        );
        let config_path = root.join("dovecot.conf");
        std::fs::write(&config_path, config).unwrap();
        let child = Command::new(binary)
            .arg("-F")
            .arg("-c")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("cannot start dovecot");
        let dovecot = Dovecot {
            tls_port,
            starttls_port,
            certificates,
            dir,
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        for port in [tls_port, starttls_port] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "Dovecot did not listen on port {port}; its log:\n{}",
                    dovecot.log()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        dovecot
    }

    /// Dovecot's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dovecot.log")).unwrap_or_default()
    }

    /// The `imaps://` URL of the mailbox (no password: herald reads it from the
    /// environment).
    pub fn imaps_url(&self) -> String {
        format!(
            "imaps://bounces%40news.example.org@127.0.0.1:{}/INBOX",
            self.tls_port
        )
    }

    /// The `imap://` (STARTTLS) URL of the mailbox.
    pub fn starttls_url(&self) -> String {
        format!(
            "imap://bounces%40news.example.org@127.0.0.1:{}/INBOX",
            self.starttls_port
        )
    }

    fn client(&self, args: &[&str]) -> String {
        let out = Command::new("python3")
            .arg(repo().join("tests/support/imap_client.py"))
            .arg(self.tls_port.to_string())
            .arg(&self.certificates.ca)
            .arg(USER)
            .arg(PASSWORD)
            .args(args)
            .output()
            .expect("python3 must be installed");
        assert!(
            out.status.success(),
            "imap_client.py {args:?}: {}\nDovecot's log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Delivers each mail into INBOX with IMAP APPEND.
    pub fn append(&self, mails: &[&[u8]]) {
        let folder = tempfile::tempdir().unwrap();
        let mut files = Vec::new();
        for (i, mail) in mails.iter().enumerate() {
            let path = folder.path().join(format!("{i}.eml"));
            std::fs::write(&path, mail).unwrap();
            files.push(path.to_string_lossy().into_owned());
        }
        let mut args = vec!["append"];
        args.extend(files.iter().map(String::as_str));
        self.client(&args);
    }

    /// Each mail's flags by UID (`\Recent` left out), read without changing them.
    pub fn flags(&self) -> BTreeMap<u32, Vec<String>> {
        let json: BTreeMap<String, Vec<String>> =
            serde_json::from_str(&self.client(&["flags"])).unwrap();
        json.into_iter()
            .map(|(uid, flags)| (uid.parse().unwrap(), flags))
            .collect()
    }
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // SIGTERM lets the master stop its children; SIGKILL if it lingers.
        // SAFETY: kill with a pid this test started.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn chown(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
}

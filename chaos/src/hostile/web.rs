//! The local HTTP server the attacks' `http` steps fetch from: `/text/<n>` answers `n` bytes of
//! `x`, `/nul/<n>` `n` NUL bytes (six bytes each once in a JSON report), `/redirect?<url>` a 302
//! to `url`. Plain tokio, one request per connection.

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Largest body it answers.
const MAX_BODY: usize = 1024 * 1024;

/// Starts serving on a free loopback port; its base URL (`http://127.0.0.1:<port>`).
pub async fn serve() -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("failed to bind the HTTP target")?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(answer(stream));
        }
    });
    Ok(base)
}

async fn answer(mut stream: TcpStream) {
    let mut head = Vec::new();
    let mut buffer = [0; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buffer[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let _ = stream.write_all(&response(path)).await;
}

fn response(path: &str) -> Vec<u8> {
    let ok = |byte: u8, n: &str| {
        let n = n.parse::<usize>().unwrap_or_default().min(MAX_BODY);
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {n}\r\nconnection: close\r\n\r\n"
        )
        .into_bytes();
        out.resize(out.len() + n, byte);
        out
    };
    if let Some(n) = path.strip_prefix("/text/") {
        ok(b'x', n)
    } else if let Some(n) = path.strip_prefix("/nul/") {
        ok(0, n)
    } else if let Some(to) = path.strip_prefix("/redirect?") {
        format!("HTTP/1.1 302 Found\r\nlocation: {to}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .into_bytes()
    } else {
        b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_sized_bodies_and_redirects() {
        let text = response("/text/3");
        assert!(text.ends_with(b"\r\n\r\nxxx"), "{text:?}");
        assert!(response("/nul/2").ends_with(b"\r\n\r\n\0\0"));
        let redirect = String::from_utf8(response("/redirect?http://a/b")).expect("text");
        assert!(redirect.contains("location: http://a/b\r\n"), "{redirect}");
        assert!(response("/elsewhere").starts_with(b"HTTP/1.1 404"));
    }
}

using System.Collections.Concurrent;
using System.Security.Cryptography;

namespace PortAzure.AzureDevOpsEmulator.Port;

/// <summary>Issued tokens and the runs Port has locked (terminated), thread-safe.</summary>
internal sealed class PortState(TimeProvider time)
{
    private readonly ConcurrentDictionary<string, DateTimeOffset> _tokens = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, string> _terminatedRuns = new(StringComparer.Ordinal);
    private int _issued;

    public int TokensIssued => Volatile.Read(ref _issued);

    public string IssueToken(TimeSpan lifetime)
    {
        var token = RandomNumberGenerator.GetHexString(48, lowercase: true);
        _tokens[token] = time.GetUtcNow() + lifetime;
        Interlocked.Increment(ref _issued);
        return token;
    }

    /// <summary>Whether the header is <c>Bearer &lt;issued, unexpired token&gt;</c>.</summary>
    public bool IsAuthorized(string? authorization)
    {
        const string Scheme = "Bearer ";
        if (authorization is null || !authorization.StartsWith(Scheme, StringComparison.OrdinalIgnoreCase))
        {
            return false;
        }
        var token = authorization[Scheme.Length..].Trim();
        return _tokens.TryGetValue(token, out var expiresAt) && time.GetUtcNow() < expiresAt;
    }

    /// <summary>Locks the run with its termination status; false when it was locked already.</summary>
    public bool TryTerminate(string runId, string terminationStatus) => _terminatedRuns.TryAdd(runId, terminationStatus);
}

using System.Security.Cryptography;

namespace PortAzure.Signing;

/// <summary>How the HMAC-SHA1 that Azure DevOps checks is written into the header.</summary>
public enum SignatureFormat
{
    /// <summary>Uppercase hex without prefix, as Microsoft documents for incoming webhooks.</summary>
    Hex,

    /// <summary>GitHub's form: <c>sha1=</c> followed by lowercase hex.</summary>
    Sha1Prefixed,
}

/// <summary>The signature Azure DevOps checks on an incoming webhook: HMAC-SHA1 of the exact body bytes.</summary>
public static class AzureSignature
{
    public static string Compute(ReadOnlySpan<byte> body, byte[] secret, SignatureFormat format)
    {
        ArgumentNullException.ThrowIfNull(secret);
        Span<byte> mac = stackalloc byte[20];
        // SHA-1 is what Azure DevOps (and Port's legacy scheme) checks; the choice is not ours.
        #pragma warning disable CA5350
        HMACSHA1.HashData(secret, body, mac);
        #pragma warning restore CA5350
        return format switch
        {
            SignatureFormat.Hex => Convert.ToHexString(mac),
            SignatureFormat.Sha1Prefixed => "sha1=" + Convert.ToHexStringLower(mac),
            _ => throw new ArgumentOutOfRangeException(nameof(format), format, null),
        };
    }
}

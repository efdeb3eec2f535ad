using PortAzure.Security;

namespace PortAzure.Tests.Security;

public class PortOptionsTests
{
    [Theory]
    [InlineData("\uFEFFa-port-client-secret")] // a byte-order mark: a file saved on Windows
    [InlineData("a-port-client-secret\u200B")] // a zero-width space: pasted from a web page
    [InlineData("a-port-\u2060client-secret")] // a word joiner inside
    [InlineData("a-port-client-secret\U000E0041")] // a tag character, beyond 16 bits
    [InlineData("a-port-client-secret\n")]
    [InlineData(" a-port-client-secret")]
    [InlineData("a-port-\u0007client-secret")]
    public void SecretShapeError_InvisibleWhiteOrControlCharacter_NamesTheKey(string secret)
    {
        var error = PortOptions.SecretShapeError("Port:ClientSecret", secret);

        Assert.NotNull(error);
        Assert.StartsWith("Port:ClientSecret begins or ends with white space or holds a control or invisible character", error, StringComparison.Ordinal);
        Assert.DoesNotContain(secret.Trim(), error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(null)]
    [InlineData("")]
    [InlineData("a port client secret with spaces inside")]
    [InlineData("clé-secrète-ünïcode")]
    public void SecretShapeError_UnsetOrVisible_IsNone(string? secret)
    {
        Assert.Null(PortOptions.SecretShapeError("Port:ClientSecret", secret));
    }
}

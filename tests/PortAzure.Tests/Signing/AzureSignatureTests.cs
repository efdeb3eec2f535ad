using System.Text;
using PortAzure.Signing;

namespace PortAzure.Tests.Signing;

public class AzureSignatureTests
{
    private static readonly byte[] MicrosoftBody = Encoding.UTF8.GetBytes("""{"resource":{"message":{"title":"Hello, world!","subtitle":"I'm using WebHooks!"}}}""");

    [Fact]
    public void Compute_MicrosoftDocumentedExample_GivesUppercaseHex()
    {
        Assert.Equal("750D33212D3AD4932CC390819050734831A0A94F", AzureSignature.Compute(MicrosoftBody, Encoding.UTF8.GetBytes("secret"), SignatureFormat.Hex));
    }

    [Fact]
    public void Compute_Sha1PrefixedFormat_GivesGitHubStyleLowercase()
    {
        Assert.Equal("sha1=750d33212d3ad4932cc390819050734831a0a94f", AzureSignature.Compute(MicrosoftBody, Encoding.UTF8.GetBytes("secret"), SignatureFormat.Sha1Prefixed));
    }
}

using Microsoft.Extensions.Hosting;

namespace PortAzure.Tests.ServiceDefaults;

public class RelayHostTests
{
    [Fact]
    public void Options_NoContentRootGiven_IsTheAppsOwnFolder()
    {
        Assert.Equal(AppContext.BaseDirectory, RelayHost.Options([]).ContentRootPath);
    }

    [Theory]
    [InlineData("--contentRoot", "/etc/portazure")]
    [InlineData("--contentroot=/etc/portazure", null)]
    public void Options_ContentRootOnTheCommandLine_IsLeftToTheHost(string first, string? second)
    {
        string[] args = second is null ? [first] : [first, second];

        var options = RelayHost.Options(args);

        Assert.Null(options.ContentRootPath);
        Assert.Equal(args, options.Args);
    }
}
